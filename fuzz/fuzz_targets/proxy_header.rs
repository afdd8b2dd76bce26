//! `proxy_header`: reading a PROXY protocol header off the front of a
//! connection with `proto::proxy::parse`, as src/io/proxy.rs does, with the
//! bytes arriving a few at a time.
//!
//! Input: the bytes a load balancer (or anyone) sends first.
//!
//! Checks that the parser never panics; that a header takes at most 107
//! bytes (v1) or its announced length (v2), never more than it was given;
//! that every prefix of the bytes up to where the answer came is "need
//! more", and every longer input gives the same answer (so a reader that
//! calls again with more bytes each time sees one header, found where a
//! one-shot read finds it, and never reads into what follows it); that
//! both addresses of a header are of one family; and that `announced_len`
//! agrees with what a v2 header consumed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::proto::proxy::{self, V1_MAX_LEN, V2_MAX_LEN, Version};

fuzz_target!(|data: &[u8]| {
    let whole = proxy::parse(data);
    // The shortest prefix that gets an answer; every shorter one needs more.
    let decided = (0..=data.len()).find(|&n| !matches!(proxy::parse(&data[..n]), Ok(None)));
    let Some(decided) = decided else {
        assert_eq!(whole, Ok(None), "no prefix decided, so the whole needs more");
        return;
    };
    for longer in decided..=data.len() {
        assert_eq!(proxy::parse(&data[..longer]), whole, "more bytes changed the answer");
    }
    if let Ok(Some((header, consumed))) = whole {
        assert_eq!(consumed, decided, "a header is found once its last byte arrives");
        assert!(consumed <= data.len());
        match header.version {
            Version::V1 => {
                assert!(consumed <= V1_MAX_LEN, "v1 header of {consumed} bytes");
                assert_eq!(&data[consumed - 2..consumed], b"\r\n");
                assert_eq!(proxy::announced_len(data), None);
            }
            Version::V2 => {
                assert!(consumed <= V2_MAX_LEN);
                assert_eq!(proxy::announced_len(data), Some(consumed));
            }
        }
        if let Some(addresses) = header.addresses {
            assert_eq!(addresses.source.is_ipv4(), addresses.destination.is_ipv4(), "one family for both");
        }
    }
});
