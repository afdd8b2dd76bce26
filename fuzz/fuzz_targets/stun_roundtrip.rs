//! `stun_roundtrip`: parse, write the same message with `MessageWriter`,
//! parse again, and compare.
//!
//! For a message without MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 or
//! FINGERPRINT, the rewrite must equal the input byte for byte once the
//! input's padding bytes are zeroed (the writer pads with zeros). With any of
//! them, their values cannot be reproduced without the sender's key, so the
//! attributes before them are rewritten, the same trailers are recomputed
//! with a key of ours, and the result must parse to the same attributes and
//! verify. RFC 3489 messages (no magic cookie) go through
//! `MessageWriter::with_header_tail` the same way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::proto::stun::{AttrType, HEADER_LEN, Message, MessageWriter};

const KEY: &[u8] = b"roundtrip-key";

fuzz_target!(|data: &[u8]| {
    // A recomputed MESSAGE-INTEGRITY-SHA256 is 32 bytes where the input may
    // have had 16; stay clear of the 64 KiB the writer can describe.
    if data.len() > 60_000 {
        return;
    }
    let Ok(message) = Message::parse_rfc3489(data) else { return };
    let rewritten = rewrite(&message);
    let reparsed = if message.has_magic_cookie() {
        Message::parse(&rewritten).expect("a rewritten message parses")
    } else {
        Message::parse_rfc3489(&rewritten).expect("a rewritten classic message parses")
    };

    assert_eq!(reparsed.message_type(), message.message_type());
    assert_eq!(reparsed.header_tail(), message.header_tail());
    assert_eq!(plain_attributes(&reparsed), plain_attributes(&message));
    assert_eq!(reparsed.has_integrity(), message.has_integrity());
    assert_eq!(reparsed.has_integrity_sha256(), message.has_integrity_sha256());
    assert_eq!(reparsed.has_fingerprint(), message.has_fingerprint());
    assert_eq!(reparsed.verify_integrity(KEY), message.has_integrity());
    assert_eq!(reparsed.verify_integrity_sha256(KEY), message.has_integrity_sha256());
    assert_eq!(reparsed.verify_fingerprint(), message.has_fingerprint());

    if !message.has_integrity() && !message.has_integrity_sha256() && !message.has_fingerprint() {
        assert_eq!(rewritten, zero_padding(data), "rewrite differs from the input beyond its padding");
    }
});

/// The processed attributes other than the integrity and fingerprint
/// trailers, as (type, value).
fn plain_attributes<'a>(message: &Message<'a>) -> Vec<(AttrType, &'a [u8])> {
    message
        .attributes()
        .filter(|a| {
            !matches!(a.typ, AttrType::MESSAGE_INTEGRITY | AttrType::MESSAGE_INTEGRITY_SHA256 | AttrType::FINGERPRINT)
        })
        .map(|a| (a.typ, a.value))
        .collect()
}

/// The message written again: its plain attributes, then the trailers it
/// had, recomputed with `KEY`.
fn rewrite(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = MessageWriter::with_header_tail(&mut out, message.message_type(), message.header_tail());
    for (typ, value) in plain_attributes(message) {
        w.attr(typ, value);
    }
    if message.has_integrity() {
        w.message_integrity(KEY);
    }
    if message.has_integrity_sha256() {
        w.message_integrity_sha256(KEY);
    }
    if message.has_fingerprint() {
        w.fingerprint();
    }
    w.finish();
    out
}

/// `data` with the padding after every attribute value set to zero. Only
/// called on messages the parser accepted, so the walk stays in bounds.
fn zero_padding(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut offset = HEADER_LEN;
    while offset < out.len() {
        let len = usize::from(u16::from_be_bytes([out[offset + 2], out[offset + 3]]));
        let padded = (len + 3) & !3;
        out[offset + 4 + len..offset + 4 + padded].fill(0);
        offset += 4 + padded;
    }
    out
}
