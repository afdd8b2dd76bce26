//! Whether an address can be reached from the Internet, which decides
//! whether a relayed address makes sense for the clients a server has.
//!
//! The ranges are the peer policy's special-purpose list
//! ([`BUILTIN_DENY`]), narrowed to those no Internet host can route to:
//! private, shared (CGNAT), link-local, unique local, loopback. Documentation
//! and benchmarking ranges count as public here: they are not private, and
//! test networks use them to stand for the Internet.

use std::net::IpAddr;

use crate::proto::policy::{BUILTIN_DENY, canonical};

/// The names of [`BUILTIN_DENY`] entries that no Internet host can reach.
const UNREACHABLE: &[&str] =
    &["this network", "private", "shared address space", "link-local", "unique local", "unspecified"];

/// Where an address can be reached from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Public,
    /// This host only.
    Loopback,
    /// One network only; the name says which kind (`private`, `link-local`, ...).
    Private(&'static str),
}

impl Scope {
    pub fn of(ip: IpAddr) -> Self {
        let ip = canonical(ip);
        if ip.is_loopback() {
            return Self::Loopback;
        }
        BUILTIN_DENY
            .iter()
            .filter(|(_, name)| UNREACHABLE.contains(name))
            .find(|(range, _)| range.parse::<ipnet::IpNet>().is_ok_and(|range| range.contains(&ip)))
            .map_or(Self::Public, |(_, name)| Self::Private(name))
    }

    pub fn is_public(self) -> bool {
        self == Self::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> Scope {
        Scope::of(text.parse().expect("an IP literal"))
    }

    #[test]
    fn private_ranges_are_told_from_public_ones() {
        for name in UNREACHABLE {
            assert!(BUILTIN_DENY.iter().any(|(_, n)| n == name), "{name} is a BUILTIN_DENY name");
        }
        assert_eq!(scope("10.0.0.5"), Scope::Private("private"));
        assert_eq!(scope("172.20.1.1"), Scope::Private("private"));
        assert_eq!(scope("192.168.1.1"), Scope::Private("private"));
        assert_eq!(scope("100.64.0.1"), Scope::Private("shared address space"));
        assert_eq!(scope("169.254.169.254"), Scope::Private("link-local"));
        assert_eq!(scope("fd00::1"), Scope::Private("unique local"));
        assert_eq!(scope("fe80::1"), Scope::Private("link-local"));
        assert_eq!(scope("::ffff:10.1.2.3"), Scope::Private("private"));
        assert_eq!(scope("127.0.0.1"), Scope::Loopback);
        assert_eq!(scope("::1"), Scope::Loopback);
        for public in ["203.0.113.5", "198.51.100.7", "8.8.8.8", "2001:db8::1", "2a00:1450::1"] {
            assert!(scope(public).is_public(), "{public}");
        }
    }
}
