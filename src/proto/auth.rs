//! Long-term credentials (RFC 8489 §9.2), TURN REST API time-limited
//! credentials, and stateless nonces.
//!
//! Owns the decision "who sent this request, and with which key do we sign the
//! answer". It keeps no per-client state: a nonce is an HMAC over its own
//! timestamp and the client's IP, so a flood of unauthenticated requests costs
//! no memory, and any worker (or any tern behind the same secret) can check a
//! nonce another one issued.

use std::collections::HashMap;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::integrity::long_term_key_md5;
use crate::proto::stun::{ErrorCode, Message};

/// USERNAME is at most 513 bytes (RFC 8489 §14.3).
const MAX_USERNAME: usize = 513;
/// REALM and NONCE are at most 763 bytes (RFC 8489 §14.9, §14.10).
const MAX_REALM_OR_NONCE: usize = 763;
/// Raw nonce: 8-byte timestamp and 12 bytes of MAC.
const NONCE_RAW_LEN: usize = 20;
/// The nonce as sent: unpadded base64 of the raw bytes.
pub const NONCE_LEN: usize = 27;
/// Seconds a nonce may run ahead of our clock (another worker's clock read
/// a moment later) before it counts as forged.
const NONCE_CLOCK_SKEW: u64 = 5;

type HmacSha1 = Hmac<Sha1>;

/// A long-term key: MD5(username ":" realm ":" password).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LongTermKey(pub [u8; 16]);

impl std::fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LongTermKey(..)")
    }
}

/// Where credentials come from. Static users and REST secrets from the
/// configuration are the one source today; a database would be another.
pub trait CredentialStore {
    /// The key of a static user, if `username` is one.
    fn user_key(&self, username: &str) -> Option<LongTermKey>;
    /// Shared secrets for REST API credentials, newest first.
    fn rest_secrets(&self) -> &[Vec<u8>];
}

/// Users and secrets from the configuration.
#[derive(Clone, Debug, Default)]
pub struct StaticCredentials {
    users: HashMap<String, LongTermKey>,
    secrets: Vec<Vec<u8>>,
}

impl StaticCredentials {
    pub fn new(users: HashMap<String, LongTermKey>, secrets: Vec<Vec<u8>>) -> Self {
        Self { users, secrets }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.secrets.is_empty()
    }
}

impl CredentialStore for StaticCredentials {
    fn user_key(&self, username: &str) -> Option<LongTermKey> {
        self.users.get(username).copied()
    }

    fn rest_secrets(&self) -> &[Vec<u8>] {
        &self.secrets
    }
}

/// A request that passed authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated<'m> {
    pub username: &'m str,
    pub key: LongTermKey,
}

/// Why a request was not authenticated, and so what to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No MESSAGE-INTEGRITY: the first request of every client. 401 with REALM and NONCE.
    Challenge,
    /// MESSAGE-INTEGRITY without USERNAME, REALM or NONCE. 400.
    MissingAttributes,
    /// USERNAME unknown, REALM not ours, REST credential expired or
    /// malformed. 401 with REALM and NONCE.
    UnknownUser,
    /// MESSAGE-INTEGRITY does not match. 401 with REALM and NONCE.
    WrongIntegrity,
    /// Credentials were right but the nonce is expired or not ours. 438 with
    /// a fresh NONCE and REALM.
    StaleNonce,
}

impl AuthError {
    pub fn code(self) -> ErrorCode {
        match self {
            Self::MissingAttributes => ErrorCode::BAD_REQUEST,
            Self::StaleNonce => ErrorCode::STALE_NONCE,
            Self::Challenge | Self::UnknownUser | Self::WrongIntegrity => ErrorCode::UNAUTHENTICATED,
        }
    }

    /// Whether the answer carries REALM and a fresh NONCE.
    pub fn sends_challenge(self) -> bool {
        !matches!(self, Self::MissingAttributes)
    }
}

/// Checks long-term credentials and issues nonces.
#[derive(Clone, Debug)]
pub struct Authenticator<S = StaticCredentials> {
    realm: String,
    store: S,
    nonce_key: [u8; 32],
    nonce_lifetime: u64,
}

impl<S: CredentialStore> Authenticator<S> {
    /// `nonce_key` must be secret and shared by every worker that may see
    /// the same client; `nonce_lifetime` is in seconds.
    pub fn new(realm: String, store: S, nonce_key: [u8; 32], nonce_lifetime: u64) -> Self {
        Self { realm, store, nonce_key, nonce_lifetime }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A nonce for a client at `client_ip`, valid for the nonce lifetime from `now_unix`.
    pub fn nonce(&self, client_ip: IpAddr, now_unix: u64) -> [u8; NONCE_LEN] {
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..8].copy_from_slice(&now_unix.to_be_bytes());
        raw[8..].copy_from_slice(&self.nonce_mac(now_unix, client_ip));
        let mut out = [0u8; NONCE_LEN];
        let written = STANDARD_NO_PAD.encode_slice(raw, &mut out).expect("27 bytes hold 20 in base64");
        debug_assert_eq!(written, NONCE_LEN);
        out
    }

    fn nonce_mac(&self, timestamp: u64, client_ip: IpAddr) -> [u8; 12] {
        let mut mac = HmacSha1::new_from_slice(&self.nonce_key).expect("HMAC accepts keys of any length");
        mac.update(&timestamp.to_be_bytes());
        match client_ip {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        let full: [u8; 20] = mac.finalize().into_bytes().into();
        let mut truncated = [0u8; 12];
        truncated.copy_from_slice(&full[..12]);
        truncated
    }

    fn nonce_is_valid(&self, nonce: &[u8], client_ip: IpAddr, now_unix: u64) -> bool {
        let mut raw = [0u8; NONCE_RAW_LEN + 3];
        let Ok(NONCE_RAW_LEN) = STANDARD_NO_PAD.decode_slice(nonce, &mut raw) else { return false };
        let timestamp = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let fresh =
            timestamp <= now_unix + NONCE_CLOCK_SKEW && now_unix < timestamp.saturating_add(self.nonce_lifetime);
        fresh && bool::from(self.nonce_mac(timestamp, client_ip).ct_eq(&raw[8..NONCE_RAW_LEN]))
    }

    /// Authenticates `request` from `client_ip` (RFC 8489 §9.2.4, in its order).
    pub fn authenticate<'m>(
        &self,
        request: &Message<'m>,
        client_ip: IpAddr,
        now_unix: u64,
    ) -> Result<Authenticated<'m>, AuthError> {
        if !request.has_integrity() {
            return Err(AuthError::Challenge);
        }
        let (Some(username), Some(realm), Some(nonce)) = (
            request.attribute(AttrType::USERNAME),
            request.attribute(AttrType::REALM),
            request.attribute(AttrType::NONCE),
        ) else {
            return Err(AuthError::MissingAttributes);
        };
        let username = attr::read_text(username, MAX_USERNAME, "USERNAME").map_err(|_| AuthError::UnknownUser)?;
        if realm.len() > MAX_REALM_OR_NONCE || nonce.len() > MAX_REALM_OR_NONCE || realm != self.realm.as_bytes() {
            return Err(AuthError::UnknownUser);
        }
        let key = match self.store.user_key(username) {
            Some(key) => {
                if !request.verify_integrity(&key.0) {
                    return Err(AuthError::WrongIntegrity);
                }
                key
            }
            None => self.rest_key(request, username, now_unix)?,
        };
        if !self.nonce_is_valid(nonce, client_ip, now_unix) {
            return Err(AuthError::StaleNonce);
        }
        Ok(Authenticated { username, key })
    }

    /// TURN REST API credentials: username `EXPIRY:USER`, password
    /// base64(HMAC-SHA1(secret, username)). Any configured secret may match,
    /// so secrets can be rotated without a flag day.
    fn rest_key(&self, request: &Message<'_>, username: &str, now_unix: u64) -> Result<LongTermKey, AuthError> {
        let secrets = self.store.rest_secrets();
        if secrets.is_empty() {
            return Err(AuthError::UnknownUser);
        }
        let expiry = username.split(':').next().and_then(|e| e.parse::<u64>().ok()).ok_or(AuthError::UnknownUser)?;
        if expiry <= now_unix {
            return Err(AuthError::UnknownUser);
        }
        secrets
            .iter()
            .map(|secret| LongTermKey(long_term_key_md5(username, &self.realm, &rest_password(secret, username))))
            .find(|key| request.verify_integrity(&key.0))
            .ok_or(AuthError::WrongIntegrity)
    }
}

/// The REST API password for `username` under `secret`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stun::{Class, MessageType, MessageWriter, Method, TransactionId};

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const NOW: u64 = 1_800_000_000;

    fn authenticator() -> Authenticator {
        let mut users = HashMap::new();
        users.insert("alice".to_owned(), LongTermKey(long_term_key_md5("alice", "example.org", "secret")));
        let store = StaticCredentials::new(users, vec![b"rest-new".to_vec(), b"rest-old".to_vec()]);
        Authenticator::new("example.org".into(), store, [7; 32], 600)
    }

    fn request(username: &str, realm: &str, nonce: &[u8], key: Option<&[u8]>) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId([3; 12]));
        w.attr(AttrType::USERNAME, username.as_bytes())
            .attr(AttrType::REALM, realm.as_bytes())
            .attr(AttrType::NONCE, nonce);
        if let Some(key) = key {
            w.message_integrity(key);
        }
        buf
    }

    fn check(auth: &Authenticator, bytes: &[u8], now: u64) -> Result<String, AuthError> {
        let message = Message::parse(bytes).expect("well-formed");
        auth.authenticate(&message, IP, now).map(|a| a.username.to_owned())
    }

    #[test]
    fn static_user_with_right_password_and_fresh_nonce_is_accepted() {
        let auth = authenticator();
        let nonce = auth.nonce(IP, NOW);
        let key = long_term_key_md5("alice", "example.org", "secret");
        assert_eq!(check(&auth, &request("alice", "example.org", &nonce, Some(&key)), NOW + 10), Ok("alice".into()));
    }

    #[test]
    fn each_failure_maps_to_its_error() {
        let auth = authenticator();
        let nonce = auth.nonce(IP, NOW);
        let key = long_term_key_md5("alice", "example.org", "secret");
        let wrong = long_term_key_md5("alice", "example.org", "guess");
        assert_eq!(check(&auth, &request("alice", "example.org", &nonce, None), NOW), Err(AuthError::Challenge));
        assert_eq!(
            check(&auth, &request("alice", "example.org", &nonce, Some(&wrong)), NOW),
            Err(AuthError::WrongIntegrity)
        );
        assert_eq!(
            check(&auth, &request("mallory", "example.org", &nonce, Some(&key)), NOW),
            Err(AuthError::UnknownUser)
        );
        assert_eq!(check(&auth, &request("alice", "other.org", &nonce, Some(&key)), NOW), Err(AuthError::UnknownUser));
        // Expired nonce and a nonce issued to another IP are both stale.
        assert_eq!(
            check(&auth, &request("alice", "example.org", &nonce, Some(&key)), NOW + 600),
            Err(AuthError::StaleNonce)
        );
        let other_ip = auth.nonce(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)), NOW);
        assert_eq!(
            check(&auth, &request("alice", "example.org", &other_ip, Some(&key)), NOW),
            Err(AuthError::StaleNonce)
        );
        assert_eq!(
            check(&auth, &request("alice", "example.org", b"garbage", Some(&key)), NOW),
            Err(AuthError::StaleNonce)
        );

        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId([3; 12]));
        w.attr(AttrType::USERNAME, b"alice").message_integrity(&key);
        assert_eq!(check(&auth, &buf, NOW), Err(AuthError::MissingAttributes));
    }

    #[test]
    fn rest_credentials_work_with_any_secret_until_they_expire() {
        let auth = authenticator();
        let nonce = auth.nonce(IP, NOW);
        let username = format!("{}:bob", NOW + 3600);
        for secret in [&b"rest-new"[..], b"rest-old"] {
            let key = long_term_key_md5(&username, "example.org", &rest_password(secret, &username));
            assert_eq!(check(&auth, &request(&username, "example.org", &nonce, Some(&key)), NOW), Ok(username.clone()));
        }
        let key = long_term_key_md5(&username, "example.org", &rest_password(b"unknown", &username));
        assert_eq!(
            check(&auth, &request(&username, "example.org", &nonce, Some(&key)), NOW),
            Err(AuthError::WrongIntegrity)
        );

        let expired = format!("{}:bob", NOW - 1);
        let key = long_term_key_md5(&expired, "example.org", &rest_password(b"rest-new", &expired));
        assert_eq!(
            check(&auth, &request(&expired, "example.org", &nonce, Some(&key)), NOW),
            Err(AuthError::UnknownUser)
        );
        let no_expiry = "bob";
        let key = long_term_key_md5(no_expiry, "example.org", &rest_password(b"rest-new", no_expiry));
        assert_eq!(
            check(&auth, &request(no_expiry, "example.org", &nonce, Some(&key)), NOW),
            Err(AuthError::UnknownUser)
        );
    }

    #[test]
    fn rest_password_is_base64_of_hmac_sha1() {
        // Computed independently with Python's hmac and base64 modules.
        assert_eq!(rest_password(b"secret", "1700000000:alice"), "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }
}
