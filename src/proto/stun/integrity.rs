//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
//! (RFC 8489 §14.5-14.7), and the long-term credential keys (§9.2.2).
//!
//! The MACs cover the message up to the attribute that holds them, with the
//! header's length field set as if that attribute were the last one. Callers
//! pass the header separately so the length can be patched without copying the
//! message. Comparisons are constant-time.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use super::HEADER_LEN;

/// FINGERPRINT is the CRC-32 of the message XORed with this ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Length of a MESSAGE-INTEGRITY value.
pub const SHA1_MAC_LEN: usize = 20;
/// Length of a full MESSAGE-INTEGRITY-SHA256 value.
pub const SHA256_MAC_LEN: usize = 32;
/// MESSAGE-INTEGRITY-SHA256 may be truncated, to no fewer than 16 bytes (§14.6).
pub const SHA256_MAC_MIN_LEN: usize = 16;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// The 20-byte header with its length field replaced by `length`.
pub fn header_with_length(message: &[u8], length: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&message[..HEADER_LEN]);
    // Lengths come from a u16 field plus attributes inside it, so they fit.
    header[2..4].copy_from_slice(&(length as u16).to_be_bytes());
    header
}

/// HMAC-SHA1 over `header` then `body` (the bytes between the header and the
/// MESSAGE-INTEGRITY attribute).
pub fn hmac_sha1(key: &[u8], header: &[u8; HEADER_LEN], body: &[u8]) -> [u8; SHA1_MAC_LEN] {
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(header);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a MESSAGE-INTEGRITY value.
pub fn verify_hmac_sha1(key: &[u8], header: &[u8; HEADER_LEN], body: &[u8], expected: &[u8]) -> bool {
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(header);
    mac.update(body);
    mac.verify_slice(expected).is_ok()
}

/// HMAC-SHA256 over `header` then `body`.
pub fn hmac_sha256(key: &[u8], header: &[u8; HEADER_LEN], body: &[u8]) -> [u8; SHA256_MAC_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(header);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a MESSAGE-INTEGRITY-SHA256 value, which may be
/// truncated to its leftmost 16..=32 bytes.
pub fn verify_hmac_sha256(key: &[u8], header: &[u8; HEADER_LEN], body: &[u8], expected: &[u8]) -> bool {
    if !(SHA256_MAC_MIN_LEN..=SHA256_MAC_LEN).contains(&expected.len()) {
        return false;
    }
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(header);
    mac.update(body);
    mac.verify_truncated_left(expected).is_ok()
}

/// The FINGERPRINT value for the message bytes before the attribute, whose
/// header length already counts the FINGERPRINT attribute.
pub fn fingerprint(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ FINGERPRINT_XOR
}

/// Long-term key for MD5 (RFC 8489 §9.2.2): MD5(username ":" realm ":" password).
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(username.as_bytes());
    hasher.update(b":");
    hasher.update(realm.as_bytes());
    hasher.update(b":");
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// Long-term key for SHA-256 (RFC 8489 §9.2.2).
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(username.as_bytes());
    hasher.update(b":");
    hasher.update(realm.as_bytes());
    hasher.update(b":");
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// Appends MESSAGE-INTEGRITY-SHA256 truncated to `len` bytes (§14.6) to the
/// message in `buf`, which the writer never does (tern always sends 32); for
/// tests of receivers that must accept truncation.
#[cfg(test)]
pub(crate) fn append_truncated_integrity_sha256(buf: &mut Vec<u8>, key: &[u8], len: usize) {
    use super::{ATTR_HEADER_LEN, AttrType};
    let covered = buf.len() - HEADER_LEN + ATTR_HEADER_LEN + len;
    let header = header_with_length(buf, covered);
    let full = hmac_sha256(key, &header, &buf[HEADER_LEN..]);
    buf.extend_from_slice(&AttrType::MESSAGE_INTEGRITY_SHA256.0.to_be_bytes());
    buf.extend_from_slice(&(len as u16).to_be_bytes());
    buf.extend_from_slice(&full[..len]);
    let length = (buf.len() - HEADER_LEN) as u16;
    buf[2..4].copy_from_slice(&length.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_iso_hdlc_one() {
        // The check value of CRC-32/ISO-HDLC, the CRC RFC 8489 §14.7 names.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn truncated_sha256_mac_verifies_and_short_one_does_not() {
        let header = [0u8; HEADER_LEN];
        let mac = hmac_sha256(b"key", &header, b"body");
        assert!(verify_hmac_sha256(b"key", &header, b"body", &mac));
        assert!(verify_hmac_sha256(b"key", &header, b"body", &mac[..16]));
        assert!(!verify_hmac_sha256(b"key", &header, b"body", &mac[..12]));
        assert!(!verify_hmac_sha256(b"other", &header, b"body", &mac));
    }
}
