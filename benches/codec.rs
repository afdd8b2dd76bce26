//! Micro-benchmarks of the hot codec paths: reading a request, checking its
//! MESSAGE-INTEGRITY, writing a response into a reused buffer, reading
//! ChannelData, and deriving a long-term key.
//!
//! Run with `cargo bench --bench codec` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};

use tern::proto::channel_data::{self, ChannelData, ChannelNumber};
use tern::proto::stun::attr::AttrType;
use tern::proto::stun::integrity::long_term_key_md5;
use tern::proto::stun::{Class, Message, MessageType, MessageWriter, Method, TransactionId};

/// RFC 5769 §2.4: the username is "マトリックス", the password the SASLprep
/// form of "The<U+00AD>M<U+00AA>tr<U+2168>".
const USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
const REALM: &str = "example.org";
const PASSWORD: &str = "TheMatrIX";

/// The hex vector format of tests/vectors: `#` comment lines, then bytes.
fn hex_vector(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

fn binding_request() -> Vec<u8> {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), TransactionId([7; 12])).finish();
    buf
}

fn channel_data_frame(frame_len: usize) -> Vec<u8> {
    let payload = vec![0xAB; frame_len - channel_data::HEADER_LEN];
    let channel = ChannelNumber::new(0x4001).expect("in range");
    let mut frame = Vec::new();
    channel_data::append(&mut frame, channel, &payload, false).expect("small");
    frame
}

fn parse(c: &mut Criterion) {
    let request = binding_request();
    assert_eq!(request.len(), 20);
    c.bench_function("parse binding request (20 B)", |b| {
        b.iter(|| Message::parse(black_box(&request)).expect("valid").message_type())
    });

    let long_term = hex_vector(include_str!("../tests/vectors/rfc5769-2.4-long-term-request.hex"));
    let key = long_term_key_md5(USERNAME, REALM, PASSWORD);
    assert!(Message::parse(&long_term).expect("valid").verify_integrity(&key));
    c.bench_function("parse + verify MESSAGE-INTEGRITY (RFC 5769 2.4, 116 B)", |b| {
        b.iter(|| Message::parse(black_box(&long_term)).expect("valid").verify_integrity(black_box(&key)))
    });
}

fn write(c: &mut Criterion) {
    let tid = TransactionId([0x5A; 12]);
    let success = MessageType::new(Method::BINDING, Class::Success);
    let mapped: SocketAddr = "192.0.2.1:32853".parse().expect("literal");
    let key = long_term_key_md5(USERNAME, REALM, PASSWORD);
    let mut buf = Vec::with_capacity(1500);

    c.bench_function("write binding success + XOR-MAPPED-ADDRESS v4", |b| {
        b.iter(|| {
            buf.clear();
            let mut w = MessageWriter::new(&mut buf, success, black_box(tid));
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, black_box(&mapped));
            black_box(w.finish())
        })
    });

    c.bench_function("write binding success + XOR-MAPPED-ADDRESS v4 + MI + FINGERPRINT", |b| {
        b.iter(|| {
            buf.clear();
            let mut w = MessageWriter::new(&mut buf, success, black_box(tid));
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, black_box(&mapped))
                .message_integrity(black_box(&key))
                .fingerprint();
            black_box(w.finish())
        })
    });
}

fn channel_data(c: &mut Criterion) {
    for frame_len in [100, 1200] {
        let frame = channel_data_frame(frame_len);
        c.bench_function(&format!("ChannelData::parse ({frame_len} B frame)"), |b| {
            b.iter(|| ChannelData::parse(black_box(&frame)).expect("valid").payload.len())
        });
    }
}

fn keys(c: &mut Criterion) {
    c.bench_function("long_term_key_md5", |b| {
        b.iter(|| long_term_key_md5(black_box(USERNAME), black_box(REALM), black_box(PASSWORD)))
    });
}

criterion_group!(benches, parse, write, channel_data, keys);
criterion_main!(benches);
