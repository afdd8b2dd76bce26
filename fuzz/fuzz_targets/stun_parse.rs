//! `stun_parse`: any bytes through the STUN reader.
//!
//! Checks that `Message::parse` and `Message::parse_rfc3489` never panic,
//! that every attribute a parsed message hands out lies inside the message,
//! that every typed reader in `stun::attr` accepts or rejects every
//! attribute value without panicking, that an address that reads back
//! writes back to the same bytes, and that the integrity and fingerprint
//! checks run on whatever the parser accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::proto::stun::attr;
use tern::proto::stun::integrity::long_term_key_md5;
use tern::proto::stun::{HEADER_LEN, Message};

/// The short-term password of the RFC 5769 samples, so the seeds verify.
const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

fuzz_target!(|data: &[u8]| {
    let strict = Message::parse(data);
    let classic = Message::parse_rfc3489(data);
    if let Ok(message) = strict {
        // The cookie check is the only difference between the two.
        assert!(classic.is_ok(), "parse accepted what parse_rfc3489 refused");
        assert!(message.has_magic_cookie());
        exercise(&message);
    }
    if let Ok(message) = classic {
        exercise(&message);
    }
});

fn exercise(message: &Message<'_>) {
    let bytes = message.as_bytes();
    let tid = message.transaction_id();
    assert_eq!(&message.header_tail()[4..], &tid.0);
    let _ = (message.method().name(), message.class(), message.message_type().to_u16());

    for attribute in message.attributes() {
        // The value is a slice of the message right after its header.
        let start = attribute.offset + 4;
        assert!(attribute.offset >= HEADER_LEN && attribute.offset.is_multiple_of(4));
        assert_eq!(&bytes[start..start + attribute.value.len()], attribute.value);
        assert!(message.attribute(attribute.typ).is_some());
        read_every_way(attribute.value, &tid);
    }
    let unknown = message.unknown_required().count();
    assert!(unknown <= message.attributes().count());
    assert!(message.unknown_required().all(|t| t.is_comprehension_required() && !t.is_known()));

    // The checks must run, not panic, on anything the parser accepted.
    let long_term = long_term_key_md5("user", "realm", "password");
    for key in [SHORT_TERM_PASSWORD, &long_term[..], b""] {
        let _ = message.verify_integrity(key);
        let _ = message.verify_integrity_sha256(key);
    }
    let _ = message.verify_fingerprint();
    assert!(!message.verify_integrity(b"k") || message.has_integrity());
    assert!(!message.verify_integrity_sha256(b"k") || message.has_integrity_sha256());
    assert!(!message.verify_fingerprint() || message.has_fingerprint());
}

/// Every reader on one value, whatever its type says it is.
fn read_every_way(value: &[u8], tid: &tern::proto::stun::TransactionId) {
    if let Ok(addr) = attr::read_address(value) {
        // Byte 0 is reserved; the rest must come back as it was.
        let mut out = vec![0u8; attr::address_value_len(&addr)];
        attr::write_address(&mut out, &addr, None);
        assert_eq!(out[1..], value[1..], "address did not round-trip");
    }
    if let Ok(addr) = attr::read_xor_address(value, tid) {
        let mut out = vec![0u8; attr::address_value_len(&addr)];
        attr::write_address(&mut out, &addr, Some(tid));
        assert_eq!(out[1..], value[1..], "XOR address did not round-trip");
    }
    assert_eq!(attr::read_address(value).is_ok(), attr::read_xor_address(value, tid).is_ok());
    if let Ok(v) = attr::read_u32(value) {
        assert_eq!(v.to_be_bytes(), value);
    }
    for max in [0, 4, 513, 763] {
        if let Ok(text) = attr::read_text(value, max, "text") {
            assert!(text.len() <= max && text.as_bytes() == value);
        }
    }
    if let Ok(error) = attr::read_error_code(value) {
        assert!((300..=699).contains(&error.code));
    }
    if let Ok(types) = attr::read_unknown_attributes(value) {
        assert_eq!(types.count(), value.len() / 2);
    }
    let _ = attr::read_requested_transport(value);
    let _ = attr::read_address_family(value);
    let _ = attr::read_even_port(value);
    let _ = attr::read_channel_number(value);
    if let Ok(token) = attr::read_reservation_token(value) {
        assert_eq!(token, value);
    }
}
