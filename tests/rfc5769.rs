//! RFC 5769 test vectors: each sample is parsed, its integrity and fingerprint
//! checked, and then written again with `MessageWriter`, which must reproduce
//! it byte for byte.

use std::net::SocketAddr;

use tern::proto::stun::attr::{self, AttrType};
use tern::proto::stun::integrity::long_term_key_md5;
use tern::proto::stun::{Class, Message, MessageType, MessageWriter, Method};

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.split_whitespace())
        .map(|byte| u8::from_str_radix(byte, 16).unwrap_or_else(|e| panic!("{path}: bad hex {byte:?}: {e}")))
        .collect()
}

const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

#[test]
fn sample_request_2_1() {
    let bytes = vector("rfc5769-2.1-request");
    let message = Message::parse(&bytes).expect("vector parses");
    assert_eq!(message.message_type(), MessageType::new(Method::BINDING, Class::Request));
    assert_eq!(message.attribute(AttrType::SOFTWARE), Some(&b"STUN test client"[..]));
    assert_eq!(message.attribute(AttrType::USERNAME), Some(&b"evtj:h6vY"[..]));
    assert_eq!(message.attribute(AttrType::PRIORITY).map(attr::read_u32), Some(Ok(0x6e0001ff)));
    assert!(message.verify_integrity(SHORT_TERM_PASSWORD));
    assert!(!message.verify_integrity(b"wrong password"));
    assert!(message.verify_fingerprint());

    let mut rebuilt = Vec::new();
    let mut w = MessageWriter::new(&mut rebuilt, message.message_type(), message.transaction_id());
    w.padding_byte(b' ')
        .attr(AttrType::SOFTWARE, b"STUN test client")
        .attr(AttrType::PRIORITY, &0x6e0001ffu32.to_be_bytes())
        .attr(AttrType::ICE_CONTROLLED, &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36])
        .attr(AttrType::USERNAME, b"evtj:h6vY")
        .message_integrity(SHORT_TERM_PASSWORD)
        .fingerprint();
    assert_eq!(rebuilt, bytes);
}

fn check_response(name: &str, mapped: &str) {
    let bytes = vector(name);
    let message = Message::parse(&bytes).expect("vector parses");
    assert_eq!(message.message_type(), MessageType::new(Method::BINDING, Class::Success));
    assert_eq!(message.attribute(AttrType::SOFTWARE), Some(&b"test vector"[..]));
    let mapped: SocketAddr = mapped.parse().expect("literal");
    let value = message.attribute(AttrType::XOR_MAPPED_ADDRESS).expect("XOR-MAPPED-ADDRESS present");
    assert_eq!(attr::read_xor_address(value, &message.transaction_id()), Ok(mapped));
    assert!(message.verify_integrity(SHORT_TERM_PASSWORD));
    assert!(message.verify_fingerprint());

    let mut rebuilt = Vec::new();
    let mut w = MessageWriter::new(&mut rebuilt, message.message_type(), message.transaction_id());
    w.padding_byte(b' ')
        .attr(AttrType::SOFTWARE, b"test vector")
        .xor_address(AttrType::XOR_MAPPED_ADDRESS, &mapped)
        .message_integrity(SHORT_TERM_PASSWORD)
        .fingerprint();
    assert_eq!(rebuilt, bytes);
}

#[test]
fn sample_ipv4_response_2_2() {
    check_response("rfc5769-2.2-ipv4-response", "192.0.2.1:32853");
}

#[test]
fn sample_ipv6_response_2_3() {
    check_response("rfc5769-2.3-ipv6-response", "[2001:db8:1234:5678:11:2233:4455:6677]:32853");
}

#[test]
fn sample_long_term_request_2_4() {
    // The username is "マトリックス" and the password "TheMatrIX", the SASLprep
    // form of RFC 5769's "The<U+00AD>M<U+00AA>tr<U+2168>".
    let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    let nonce = "f//499k954d6OL34oL9FSTvy64sA";
    let realm = "example.org";
    let bytes = vector("rfc5769-2.4-long-term-request");
    let message = Message::parse(&bytes).expect("vector parses");
    assert_eq!(message.attribute(AttrType::USERNAME), Some(username.as_bytes()));
    assert_eq!(message.attribute(AttrType::NONCE), Some(nonce.as_bytes()));
    assert_eq!(message.attribute(AttrType::REALM), Some(realm.as_bytes()));
    assert!(!message.has_fingerprint());
    let key = long_term_key_md5(username, realm, "TheMatrIX");
    assert!(message.verify_integrity(&key));
    assert!(!message.verify_integrity(&long_term_key_md5(username, realm, "thematrix")));

    let mut rebuilt = Vec::new();
    let mut w = MessageWriter::new(&mut rebuilt, message.message_type(), message.transaction_id());
    w.attr(AttrType::USERNAME, username.as_bytes())
        .attr(AttrType::NONCE, nonce.as_bytes())
        .attr(AttrType::REALM, realm.as_bytes())
        .message_integrity(&key);
    assert_eq!(rebuilt, bytes);
}

#[test]
fn every_truncation_and_bit_flip_is_caught() {
    let long_term_key =
        long_term_key_md5("\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}", "example.org", "TheMatrIX");
    let vectors: [(&str, &[u8]); 4] = [
        ("rfc5769-2.1-request", SHORT_TERM_PASSWORD),
        ("rfc5769-2.2-ipv4-response", SHORT_TERM_PASSWORD),
        ("rfc5769-2.3-ipv6-response", SHORT_TERM_PASSWORD),
        ("rfc5769-2.4-long-term-request", &long_term_key),
    ];
    for (name, key) in vectors {
        let bytes = vector(name);
        let has_fingerprint = Message::parse(&bytes).expect("vector parses").has_fingerprint();
        for len in 0..bytes.len() {
            assert!(Message::parse(&bytes[..len]).is_err(), "{name}: truncated to {len} bytes must not parse");
        }
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                // A flip the structure survives must be caught by
                // MESSAGE-INTEGRITY or, for the bytes after it, FINGERPRINT.
                if let Ok(message) = Message::parse(&flipped) {
                    let intact = message.verify_integrity(key) && (!has_fingerprint || message.verify_fingerprint());
                    assert!(!intact, "{name}: flip at byte {index} bit {bit} undetected");
                }
            }
        }
    }
}
