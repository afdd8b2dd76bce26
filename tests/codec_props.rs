//! Property tests of the STUN and ChannelData codec.
//!
//! Each property names the RFC rule it checks. The writer and the reader share
//! the integrity helpers, so where a property checks a MAC or the FINGERPRINT
//! it also recomputes the value here, from the RFC's definition and the raw
//! bytes, rather than trusting either side.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use proptest::collection::vec;
use proptest::prelude::*;
use sha1::Sha1;
use sha2::Sha256;

use tern::proto::channel_data::{self, ChannelData, ChannelNumber};
use tern::proto::demux::{StreamFramer, stream_frame_len};
use tern::proto::error::ParseError;
use tern::proto::stun::attr::{self, AttrType};
use tern::proto::stun::{Class, MAGIC_COOKIE, Message, MessageType, MessageWriter, Method, TransactionId};

const HEADER_LEN: usize = 20;
const MI: AttrType = AttrType::MESSAGE_INTEGRITY;
const MI_SHA256: AttrType = AttrType::MESSAGE_INTEGRITY_SHA256;
const FINGERPRINT: AttrType = AttrType::FINGERPRINT;
/// RFC 8489 §14.7: the CRC-32 is XORed with 0x5354554e ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// HMAC-SHA1 and HMAC-SHA256 both work on 64-byte blocks.
const HMAC_BLOCK: usize = 64;

// ---------------------------------------------------------------------------
// Strategies and helpers
// ---------------------------------------------------------------------------

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![Just(Class::Request), Just(Class::Indication), Just(Class::Success), Just(Class::Error)]
}

/// Any method the 12-bit field can hold, with any class.
fn message_type() -> impl Strategy<Value = MessageType> {
    (0..=0x0FFFu16, class()).prop_map(|(method, class)| MessageType::new(Method(method), class))
}

/// Any attribute type except the three whose placement and size the parser
/// polices (MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, FINGERPRINT).
fn plain_attr_type() -> impl Strategy<Value = AttrType> {
    any::<u16>()
        .prop_map(AttrType)
        .prop_filter("protection attributes are added separately", |t| ![MI, MI_SHA256, FINGERPRINT].contains(t))
}

fn plain_attrs(max_count: usize, max_len: usize) -> impl Strategy<Value = Vec<(AttrType, Vec<u8>)>> {
    vec((plain_attr_type(), vec(any::<u8>(), 0..=max_len)), 0..=max_count)
}

/// Everything needed to write one message.
#[derive(Clone, Debug)]
struct Spec {
    typ: MessageType,
    tid: TransactionId,
    padding: u8,
    attrs: Vec<(AttrType, Vec<u8>)>,
    integrity_key: Option<Vec<u8>>,
    integrity_sha256_key: Option<Vec<u8>>,
    fingerprint: bool,
}

impl Spec {
    fn is_protected(&self) -> bool {
        self.integrity_key.is_some() || self.integrity_sha256_key.is_some() || self.fingerprint
    }

    /// Appends the message to `buf` and returns its range.
    fn write_into(&self, buf: &mut Vec<u8>) -> std::ops::Range<usize> {
        let start = buf.len();
        let mut w = MessageWriter::new(buf, self.typ, self.tid);
        w.padding_byte(self.padding);
        for (typ, value) in &self.attrs {
            w.attr(*typ, value);
        }
        if let Some(key) = &self.integrity_key {
            w.message_integrity(key);
        }
        if let Some(key) = &self.integrity_sha256_key {
            w.message_integrity_sha256(key);
        }
        if self.fingerprint {
            w.fingerprint();
        }
        let len = w.finish();
        start..start + len
    }

    fn write(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.write_into(&mut buf);
        buf
    }
}

/// A message built from plain attributes only, with an arbitrary padding byte.
fn plain_spec(max_count: usize, max_len: usize) -> impl Strategy<Value = Spec> {
    (message_type(), any::<[u8; 12]>(), any::<u8>(), plain_attrs(max_count, max_len)).prop_map(
        |(typ, tid, padding, attrs)| Spec {
            typ,
            tid: TransactionId(tid),
            padding,
            attrs,
            integrity_key: None,
            integrity_sha256_key: None,
            fingerprint: false,
        },
    )
}

/// Keys from empty up to past the HMAC block size, where HMAC hashes the key.
fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=80)
}

/// A message optionally ending in MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256
/// and FINGERPRINT, in that order.
fn spec(max_count: usize, max_len: usize) -> impl Strategy<Value = Spec> {
    (plain_spec(max_count, max_len), proptest::option::of(key()), proptest::option::of(key()), any::<bool>()).prop_map(
        |(mut spec, integrity_key, integrity_sha256_key, fingerprint)| {
            spec.integrity_key = integrity_key;
            spec.integrity_sha256_key = integrity_sha256_key;
            spec.fingerprint = fingerprint;
            spec
        },
    )
}

/// Like [`spec`] but always carrying at least one of the three.
fn protected_spec(max_count: usize, max_len: usize) -> impl Strategy<Value = Spec> {
    spec(max_count, max_len).prop_filter("carries MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT", Spec::is_protected)
}

/// Whether HMAC treats two keys as the same key. HMAC (RFC 2104 §2) pads a key
/// shorter than the block with zeros, so `k` and `k || 0x00` give the same MAC;
/// that is HMAC's definition, not something the codec can or should detect.
fn hmac_equivalent(a: &[u8], b: &[u8]) -> bool {
    fn trim(k: &[u8]) -> &[u8] {
        let end = k.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &k[..end]
    }
    a.len() <= HMAC_BLOCK && b.len() <= HMAC_BLOCK && trim(a) == trim(b)
}

fn attr_list(message: &Message<'_>) -> Vec<(AttrType, Vec<u8>)> {
    message.attributes().map(|a| (a.typ, a.value.to_vec())).collect()
}

/// The header with its length field set to `length`, as RFC 8489 §14.5-14.7
/// ask for when computing MACs and the FINGERPRINT.
fn patched_prefix(message: &[u8], upto: usize, length: usize) -> Vec<u8> {
    let mut prefix = message[..upto].to_vec();
    prefix[2..4].copy_from_slice(&u16::try_from(length).expect("under 64 KiB").to_be_bytes());
    prefix
}

fn reference_hmac_sha1(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn reference_hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// True when every protection the message claims to carry checks out with the
/// given keys; false as soon as one is absent or wrong.
fn all_checks_pass(message: &Message<'_>, spec: &Spec) -> bool {
    spec.integrity_key.as_ref().is_none_or(|k| message.verify_integrity(k))
        && spec.integrity_sha256_key.as_ref().is_none_or(|k| message.verify_integrity_sha256(k))
        && (!spec.fingerprint || message.verify_fingerprint())
}

/// An IPv4 or IPv6 socket address as the wire carries it: no flow label and
/// no scope (the address attributes have no room for them).
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![any::<Ipv4Addr>().prop_map(IpAddr::V4), any::<Ipv6Addr>().prop_map(IpAddr::V6)];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// Attribute types worth aiming the structured fuzzer at: the ones the parser
/// treats specially, the typed ones, and anything else.
fn fuzz_attr_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(MI.0),
        3 => Just(MI_SHA256.0),
        3 => Just(FINGERPRINT.0),
        4 => prop::sample::select(vec![0x0001, 0x0006, 0x0009, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0016,
            0x0017, 0x0018, 0x0019, 0x0020, 0x0022, 0x8022, 0x8023]),
        2 => any::<u16>(),
    ]
}

/// One attribute as raw bytes: a header whose length may lie about the value,
/// then the value padded to four bytes. The special types mostly get the sizes
/// the parser wants, so messages get past them.
fn fuzz_attr() -> impl Strategy<Value = Vec<u8>> {
    let typ_and_len = fuzz_attr_type().prop_flat_map(|typ| {
        let usual = match AttrType(typ) {
            MI => 20,
            MI_SHA256 => 32,
            FINGERPRINT => 4,
            _ => 8,
        };
        let len = prop_oneof![
            3 => Just(usual),
            1 => prop::sample::select(vec![0usize, 4, 16, 20, 24, 28, 32]),
            2 => 0..=40usize,
        ];
        (Just(typ), len)
    });
    (typ_and_len, prop::bool::weighted(0.85), any::<u16>(), any::<u64>()).prop_map(|((typ, len), honest, lie, seed)| {
        let announced = if honest { len as u16 } else { lie % 64 };
        let mut out = Vec::with_capacity(4 + len + 3);
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&announced.to_be_bytes());
        // Cheap deterministic filler so the values are not all zero.
        out.extend((0..len).map(|i| (seed >> ((i % 8) * 8)) as u8 ^ i as u8));
        out.resize((out.len() + 3) & !3, 0);
        out
    })
}

/// Bytes that pass the header checks most of the time (leading bits, cookie,
/// length), so the fuzzer gets past them into the attribute walk.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    (message_type(), any::<[u8; 12]>(), vec(fuzz_attr(), 0..8), prop::bool::weighted(0.9), prop::bool::weighted(0.9))
        .prop_map(|(typ, tid, attrs, keep_cookie, fix_length)| {
            let mut out = Vec::new();
            out.extend_from_slice(&typ.to_u16().to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            let cookie = if keep_cookie { MAGIC_COOKIE } else { 0x0102_0304 };
            out.extend_from_slice(&cookie.to_be_bytes());
            out.extend_from_slice(&tid);
            attrs.iter().for_each(|a| out.extend_from_slice(a));
            let length = if fix_length { out.len() - HEADER_LEN } else { (out.len() - HEADER_LEN) ^ 4 };
            out[2..4].copy_from_slice(&(length as u16).to_be_bytes());
            out
        })
}

/// Runs every reader and check the codec offers over a packet. The point is
/// that none of them panics, whatever the bytes.
fn exercise(bytes: &[u8]) {
    let _ = stream_frame_len(bytes);
    let _ = tern::proto::demux::classify(bytes);
    if let Ok(data) = ChannelData::parse(bytes) {
        assert!(data.payload.len() <= bytes.len() - channel_data::HEADER_LEN);
    }
    for parsed in [Message::parse(bytes), Message::parse_rfc3489(bytes)] {
        let Ok(message) = parsed else { continue };
        let tid = message.transaction_id();
        let _ = (message.message_type(), message.header_tail(), message.has_magic_cookie());
        let _ = message.unknown_required().count();
        for a in message.attributes() {
            assert!(a.offset + 4 + a.value.len() <= bytes.len());
            let v = a.value;
            let _ = attr::read_address(v);
            let _ = attr::read_xor_address(v, &tid);
            let _ = attr::read_u32(v);
            let _ = attr::read_text(v, 513, "text");
            let _ = attr::read_text(v, 763, "text");
            let _ = attr::read_error_code(v);
            let _ = attr::read_unknown_attributes(v).map(Iterator::count);
            let _ = attr::read_requested_transport(v);
            let _ = attr::read_address_family(v);
            let _ = attr::read_even_port(v);
            let _ = attr::read_channel_number(v);
            let _ = attr::read_reservation_token(v);
        }
        for key in [&b""[..], b"key", &[0xAB; 100]] {
            let _ = message.verify_integrity(key);
            let _ = message.verify_integrity_sha256(key);
        }
        let _ = message.verify_fingerprint();
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// RFC 8489 §5 and §14: the header carries the method, class and
    /// transaction ID; each attribute is a type, a length and a value padded
    /// to a four-byte boundary, so the message length is a multiple of 4.
    /// Unknown types (comprehension-required or not) must survive as they are,
    /// and padding bytes, whatever they are, must be ignored.
    #[test]
    fn written_message_parses_back(spec in plain_spec(20, 300), prefix in vec(any::<u8>(), 0..8)) {
        let bytes = spec.write();
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), bytes.len() - HEADER_LEN);

        let message = Message::parse(&bytes).expect("a written message parses");
        prop_assert_eq!(message.message_type(), spec.typ);
        prop_assert_eq!(message.transaction_id(), spec.tid);
        prop_assert!(message.has_magic_cookie());
        prop_assert_eq!(attr_list(&message), spec.attrs.clone());
        prop_assert!(!message.has_integrity() && !message.has_integrity_sha256() && !message.has_fingerprint());

        // The writer appends: behind other bytes it must produce the same message.
        let mut buf = prefix.clone();
        let range = spec.write_into(&mut buf);
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&buf[range], &bytes[..]);
    }

    /// RFC 8489 §14.5-14.7: MESSAGE-INTEGRITY is HMAC-SHA1 and
    /// MESSAGE-INTEGRITY-SHA256 is HMAC-SHA256 over the message up to the
    /// attribute, with the header length counting up to the end of the
    /// attribute; FINGERPRINT is CRC-32 XOR 0x5354554e over everything before
    /// it and is last. Only those two and FINGERPRINT are processed after
    /// MESSAGE-INTEGRITY, so the attribute list ends with them in order.
    #[test]
    fn integrity_and_fingerprint_verify(
        spec in spec(8, 100),
        other_key in key(),
        prefix in vec(any::<u8>(), 0..8),
    ) {
        let bytes = spec.write();
        prop_assert_eq!(bytes.len() % 4, 0);
        let message = Message::parse(&bytes).expect("a written message parses");
        prop_assert_eq!(message.message_type(), spec.typ);
        prop_assert_eq!(message.transaction_id(), spec.tid);

        let attrs: Vec<_> = message.attributes().collect();
        let plain = spec.attrs.len();
        let listed: Vec<_> = attrs.iter().map(|a| (a.typ, a.value.to_vec())).collect();
        prop_assert_eq!(&listed[..plain], &spec.attrs[..]);
        let mut tail = Vec::new();
        if spec.integrity_key.is_some() { tail.push(MI) }
        if spec.integrity_sha256_key.is_some() { tail.push(MI_SHA256) }
        if spec.fingerprint { tail.push(FINGERPRINT) }
        prop_assert_eq!(attrs[plain..].iter().map(|a| a.typ).collect::<Vec<_>>(), tail);

        prop_assert_eq!(message.has_integrity(), spec.integrity_key.is_some());
        prop_assert_eq!(message.has_integrity_sha256(), spec.integrity_sha256_key.is_some());
        prop_assert_eq!(message.has_fingerprint(), spec.fingerprint);
        prop_assert_eq!(message.verify_fingerprint(), spec.fingerprint);

        for a in &attrs[plain..] {
            let end = a.offset + 4 + a.value.len();
            let covered = patched_prefix(&bytes, a.offset, end - HEADER_LEN);
            match a.typ {
                MI => {
                    let key = spec.integrity_key.as_ref().expect("written");
                    prop_assert_eq!(a.value, &reference_hmac_sha1(key, &covered)[..]);
                    prop_assert!(message.verify_integrity(key));
                    if !hmac_equivalent(key, &other_key) {
                        prop_assert!(!message.verify_integrity(&other_key));
                    }
                }
                MI_SHA256 => {
                    let key = spec.integrity_sha256_key.as_ref().expect("written");
                    prop_assert_eq!(a.value, &reference_hmac_sha256(key, &covered)[..]);
                    prop_assert!(message.verify_integrity_sha256(key));
                    if !hmac_equivalent(key, &other_key) {
                        prop_assert!(!message.verify_integrity_sha256(&other_key));
                    }
                }
                _ => {
                    prop_assert_eq!(end, bytes.len());
                    let crc = crc32fast::hash(&bytes[..a.offset]) ^ FINGERPRINT_XOR;
                    prop_assert_eq!(a.value, &crc.to_be_bytes()[..]);
                }
            }
        }
        if spec.integrity_key.is_none() {
            prop_assert!(!message.verify_integrity(&other_key));
        }
        if spec.integrity_sha256_key.is_none() {
            prop_assert!(!message.verify_integrity_sha256(&other_key));
        }

        // The MACs and the CRC are over the message, not the buffer it sits in.
        let mut buf = prefix.clone();
        let range = spec.write_into(&mut buf);
        prop_assert_eq!(&buf[range], &bytes[..]);
    }

    /// RFC 8489 §14.1 and §14.2: MAPPED-ADDRESS carries the address as is;
    /// XOR-MAPPED-ADDRESS XORs the port with the cookie's top 16 bits, an IPv4
    /// address with the cookie and an IPv6 address with cookie || transaction
    /// ID. Both must read back to the address written, for either family.
    #[test]
    fn addresses_round_trip(addr in socket_addr(), tid in any::<[u8; 12]>(), typ in message_type()) {
        let tid = TransactionId(tid);
        let mut bytes = Vec::new();
        let mut w = MessageWriter::new(&mut bytes, typ, tid);
        w.xor_address(AttrType::XOR_MAPPED_ADDRESS, &addr).address(AttrType::MAPPED_ADDRESS, &addr);
        w.finish();

        let message = Message::parse(&bytes).expect("a written message parses");
        let xor = message.attribute(AttrType::XOR_MAPPED_ADDRESS).expect("written");
        let plain = message.attribute(AttrType::MAPPED_ADDRESS).expect("written");
        let (family, value_len) = if addr.is_ipv4() { (attr::FAMILY_IPV4, 8) } else { (attr::FAMILY_IPV6, 20) };
        prop_assert_eq!((xor.len(), xor[1]), (value_len, family));
        prop_assert_eq!((plain.len(), plain[1]), (value_len, family));
        prop_assert_eq!(attr::read_xor_address(xor, &message.transaction_id()), Ok(addr));
        prop_assert_eq!(attr::read_address(plain), Ok(addr));
        prop_assert_eq!(u16::from_be_bytes([xor[2], xor[3]]), addr.port() ^ 0x2112);
    }

    /// RFC 8489 §14.8 and §14.13: ERROR-CODE carries class and number in the
    /// low bits of a 32-bit prefix and UNKNOWN-ATTRIBUTES a list of 16-bit
    /// types; both read back as written.
    #[test]
    fn error_code_and_unknown_attributes_round_trip(
        code in 300u16..700,
        reason in "[ -~\u{80}-\u{10FFFF}]{0,40}",
        types in vec(any::<u16>().prop_map(AttrType), 0..10),
    ) {
        let mut bytes = Vec::new();
        let mut w = MessageWriter::new(&mut bytes, MessageType::new(Method::BINDING, Class::Error), TransactionId([9; 12]));
        w.error_code(tern::proto::stun::ErrorCode(code), Some(&reason)).unknown_attributes(&types);
        w.finish();
        let message = Message::parse(&bytes).expect("a written message parses");
        let value = attr::read_error_code(message.attribute(AttrType::ERROR_CODE).expect("written"))
            .expect("valid ERROR-CODE");
        prop_assert_eq!((value.code, value.reason), (code, &reason[..]));
        let listed = attr::read_unknown_attributes(message.attribute(AttrType::UNKNOWN_ATTRIBUTES).expect("written"))
            .expect("even length")
            .collect::<Vec<_>>();
        prop_assert_eq!(listed, types);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// lib.rs threat model and RFC 8489 §6.3 / RFC 8656 §12.5: every byte from
    /// the network is hostile, and a malformed message or frame is discarded,
    /// never a crash. Arbitrary bytes go through both parsers, stream framing,
    /// every attribute reader and every verification.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2000)) {
        exercise(&bytes);
    }

    /// As above, with bytes shaped like a STUN message (valid header bits,
    /// usually the cookie and a right length, attributes whose lengths may
    /// lie, and many MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT attributes) so
    /// the attribute walk and the integrity checks are reached. Whenever
    /// `parse` accepts, the iterator agrees with it on which protection
    /// attributes are in force (RFC 8489 §14.5-14.7): the first
    /// MESSAGE-INTEGRITY before any -SHA256, the first -SHA256, and a single
    /// FINGERPRINT that is last.
    #[test]
    fn stun_shaped_bytes_never_panic(bytes in stun_shaped()) {
        exercise(&bytes);
        if let Ok(message) = Message::parse(&bytes) {
            let types: Vec<_> = message.attributes().map(|a| a.typ).collect();
            prop_assert_eq!(message.has_integrity(), types.contains(&MI));
            prop_assert_eq!(message.has_integrity_sha256(), types.contains(&MI_SHA256));
            prop_assert_eq!(message.has_fingerprint(), types.contains(&FINGERPRINT));
            prop_assert!(types.iter().filter(|&&t| t == MI).count() <= 1);
            prop_assert!(types.iter().filter(|&&t| t == MI_SHA256).count() <= 1);
            if message.has_fingerprint() {
                prop_assert_eq!(types.last(), Some(&FINGERPRINT));
            }
        }
    }

    /// RFC 8656 §12.4: a ChannelData message is a channel number and a length
    /// then the data; with arbitrary bytes after that header, parsing returns
    /// exactly the announced payload or refuses.
    #[test]
    fn channel_data_shaped_bytes_never_panic(
        channel in any::<u16>(),
        len in 0u16..2100,
        body in vec(any::<u8>(), 0..2000),
    ) {
        let mut bytes = channel.to_be_bytes().to_vec();
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&body);
        exercise(&bytes);
        match ChannelData::parse(&bytes) {
            Ok(data) => prop_assert_eq!(data.payload, &body[..usize::from(len)]),
            Err(ParseError::InvalidChannel(n)) => prop_assert!(ChannelNumber::new(n).is_none()),
            Err(e) => {
                prop_assert_eq!(e, ParseError::Truncated("ChannelData payload"));
                prop_assert!(body.len() < usize::from(len));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// RFC 8489 §5 and §14.5-14.7: the length field must equal the bytes
    /// after the header, so a cut message never parses; and a change to any
    /// single bit of a message carrying MESSAGE-INTEGRITY,
    /// MESSAGE-INTEGRITY-SHA256 or FINGERPRINT either breaks the structure or
    /// is caught by one of them (each check the sender added must pass for
    /// the message to count as intact).
    #[test]
    fn truncation_and_random_bit_flips_are_caught(
        spec in protected_spec(10, 120),
        flips in vec((any::<prop::sample::Index>(), 0..8u8), 32),
    ) {
        let bytes = spec.write();
        let message = Message::parse(&bytes).expect("a written message parses");
        prop_assert!(all_checks_pass(&message, &spec));
        for len in 0..bytes.len() {
            prop_assert!(Message::parse(&bytes[..len]).is_err(), "truncated to {} parses", len);
        }
        for (index, bit) in flips {
            let index = index.index(bytes.len());
            let mut flipped = bytes.clone();
            flipped[index] ^= 1 << bit;
            if let Ok(message) = Message::parse(&flipped) {
                prop_assert!(!all_checks_pass(&message, &spec), "flip of byte {} bit {} undetected", index, bit);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The same as above for every bit of smaller messages, exhaustively.
    #[test]
    fn every_bit_flip_is_caught(spec in protected_spec(4, 24)) {
        let bytes = spec.write();
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                if let Ok(message) = Message::parse(&flipped) {
                    prop_assert!(!all_checks_pass(&message, &spec), "flip of byte {} bit {} undetected", index, bit);
                }
            }
        }
    }
}

/// A frame on a stream transport.
#[derive(Clone, Debug)]
enum Frame {
    Stun(Spec),
    ChannelData(u16, Vec<u8>),
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        spec(4, 60).prop_map(Frame::Stun),
        (ChannelNumber::MIN..=ChannelNumber::MAX, vec(any::<u8>(), 0..200))
            .prop_map(|(channel, payload)| Frame::ChannelData(channel, payload)),
    ]
}

/// Writes `frame` onto a stream: STUN as is, ChannelData padded with zeros to
/// a multiple of four (RFC 8656 §12.5).
fn push_frame(stream: &mut Vec<u8>, frame: &Frame) -> usize {
    let start = stream.len();
    match frame {
        Frame::Stun(spec) => {
            spec.write_into(stream);
        }
        Frame::ChannelData(channel, payload) => {
            let channel = ChannelNumber::new(*channel).expect("generated in range");
            channel_data::append(stream, channel, payload, true).expect("small");
        }
    }
    stream.len() - start
}

fn check_frame(bytes: &[u8], frame: &Frame) -> Result<(), TestCaseError> {
    match frame {
        Frame::Stun(spec) => {
            prop_assert_eq!(bytes, &spec.write()[..]);
            let message = Message::parse(bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert!(all_checks_pass(&message, spec));
        }
        Frame::ChannelData(channel, payload) => {
            let data = ChannelData::parse(bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!((data.channel.get(), data.payload), (*channel, &payload[..]));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// RFC 8656 §12.4-12.5: channel numbers 0x4000-0x4FFF are the ones a
    /// client may use; the header is the number and the payload length, and on
    /// a stream the frame is padded to a multiple of four. Over UDP up to three
    /// bytes of padding may follow the payload and are ignored.
    #[test]
    fn channel_data_round_trips(
        channel in ChannelNumber::MIN..=ChannelNumber::MAX,
        payload in vec(any::<u8>(), 0..2000),
        padding in 0usize..=3,
    ) {
        let number = ChannelNumber::new(channel).expect("in range");
        prop_assert_eq!(number.get(), channel);
        let mut frame = Vec::new();
        channel_data::append(&mut frame, number, &payload, false).expect("small");
        frame.resize(frame.len() + padding, 0);
        let header = &frame[..channel_data::HEADER_LEN];

        let data = ChannelData::parse(&frame).expect("a written frame parses");
        prop_assert_eq!((data.channel, data.payload), (number, &payload[..]));
        prop_assert_eq!(ChannelData::parse(&frame[..3 + payload.len()]).err(),
            Some(if payload.is_empty() {
                ParseError::Truncated("ChannelData header")
            } else {
                ParseError::Truncated("ChannelData payload")
            }));

        let padded = channel_data::padded_frame_len(payload.len());
        prop_assert_eq!(padded % 4, 0);
        prop_assert!(padded >= 4 + payload.len() && padded < 4 + payload.len() + 4);
        prop_assert_eq!(stream_frame_len(header), Ok(Some(padded)));
        prop_assert_eq!(stream_frame_len(&frame), Ok(Some(padded)));
    }

    /// RFC 8656 §12: channel numbers outside 0x4000-0x4FFF cannot be bound
    /// (`ChannelNumber::new`); RFC 5766's 0x5000-0x7FFF only with the
    /// compatibility constructor. A frame parses when its number is in RFC
    /// 5766's range (binding decides what is relayed) and is refused otherwise.
    #[test]
    fn channel_numbers_outside_the_range_are_refused(
        number in any::<u16>().prop_filter("out of range", |n| !(0x4000..=0x4FFF).contains(n)),
        payload in vec(any::<u8>(), 0..64),
    ) {
        prop_assert!(ChannelNumber::new(number).is_none());
        let rfc5766 = (0x5000..=0x7FFF).contains(&number);
        prop_assert_eq!(ChannelNumber::new_rfc5766(number).is_some(), rfc5766);
        let mut frame = number.to_be_bytes().to_vec();
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&payload);
        if rfc5766 {
            prop_assert_eq!(ChannelData::parse(&frame).map(|d| d.channel.get()), Ok(number));
        } else {
            prop_assert_eq!(ChannelData::parse(&frame).err(), Some(ParseError::InvalidChannel(number)));
        }
    }

    /// RFC 8656 §12.5 and RFC 7983: on TCP/TLS the first two bits say whether
    /// the next frame is STUN (length at bytes 2..4, plus the 20-byte header)
    /// or ChannelData (length at bytes 2..4, plus its 4-byte header, padded to
    /// four). Cutting a stream of such frames by `stream_frame_len` gives back
    /// exactly the frames, and so does `StreamFramer`, however the stream is
    /// split into reads.
    #[test]
    fn stream_framing_recovers_frames(
        frames in vec(frame(), 1..8),
        reads in vec(1usize..300, 1..40),
    ) {
        let mut stream = Vec::new();
        let lens: Vec<usize> = frames.iter().map(|f| push_frame(&mut stream, f)).collect();
        prop_assert_eq!(lens.iter().sum::<usize>(), stream.len());

        // Everything at once.
        let mut rest = &stream[..];
        for (frame, len) in frames.iter().zip(&lens) {
            prop_assert_eq!(stream_frame_len(rest), Ok(Some(*len)));
            for short in 0..4.min(rest.len()) {
                prop_assert_eq!(stream_frame_len(&rest[..short]), Ok(None));
            }
            check_frame(&rest[..*len], frame)?;
            rest = &rest[*len..];
        }
        prop_assert_eq!(stream_frame_len(rest), Ok(None));

        // Split into reads of arbitrary sizes, as a connection would deliver it.
        let mut framer = StreamFramer::new();
        let mut got = Vec::new();
        let mut fed = 0;
        let mut reads = reads.iter().cycle();
        while fed < stream.len() {
            let n = (*reads.next().expect("cycle")).min(stream.len() - fed);
            framer.spare(n).copy_from_slice(&stream[fed..fed + n]);
            framer.commit(n);
            fed += n;
            while let Some(frame) = framer.next_frame().expect("stream stays framed") {
                got.push(frame.to_vec());
            }
        }
        prop_assert!(framer.buffered().is_empty());
        prop_assert_eq!(got.len(), frames.len());
        for (bytes, frame) in got.iter().zip(&frames) {
            check_frame(bytes, frame)?;
        }
    }
}
