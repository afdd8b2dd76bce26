//! What coturn does where tern's defaults are stricter, as far as the core
//! and `tern convert` need to know it: the peers coturn refuses on its own,
//! and its permission cap. The server's first-time notices
//! (`server::notices`) say "coturn allows this" only where it does, and the
//! converter (`crate::config::coturn`) carries coturn's peer lists with
//! these ranges taken into account.
//!
//! The facts are coturn 4.17.1's: `good_peer_addr` in
//! src/server/ns_turn_server.c and the `ioa_addr_is_*` checks it calls, and
//! `TURN_MAX_PERMISSIONS_PER_ALLOCATION` in src/server/ns_turn_allocation.h.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Peers coturn refuses whatever its allow lists say: the unspecified
/// addresses (all of 0.0.0.0/8), link-local (the cloud metadata service
/// among them), unique-local and the deprecated site-local scope.
pub const ALWAYS_REFUSED_PEERS: &[&str] =
    &["0.0.0.0/8", "::/128", "169.254.0.0/16", "fe80::/10", "fc00::/7", "fec0::/10"];

/// Loopback peers, which coturn refuses unless `allow-loopback-peers` is set.
pub const LOOPBACK_PEERS: &[&str] = &["127.0.0.0/8", "::1/128"];

/// Permissions an allocation may hold in coturn (508 beyond them).
pub const MAX_PERMISSIONS: u32 = 1024;

/// Whether coturn, configured with no peer option at all, relays to `ip`:
/// everything but loopback and [`ALWAYS_REFUSED_PEERS`], after reducing the
/// IPv6 forms that embed an IPv4 address (mapped, compatible, 6to4, NAT64)
/// to that address, as coturn does.
pub fn relays_by_default(ip: IpAddr) -> bool {
    match embedded_ipv4(ip) {
        IpAddr::V4(v4) => {
            let [first, second, ..] = v4.octets();
            !(first == 0 || v4.is_loopback() || (first == 169 && second == 254))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            // fe80::/10 link-local, fec0::/10 site-local, fc00::/7 unique-local.
            let scoped = (first & 0xffc0) == 0xfe80 || (first & 0xffc0) == 0xfec0 || (first & 0xfe00) == 0xfc00;
            !(v6.is_unspecified() || v6.is_loopback() || scoped)
        }
    }
}

/// The IPv4 address an IPv6 address carries in the forms coturn reduces
/// (`ioa_addr_get_embedded_ipv4`), or the address itself.
fn embedded_ipv4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let o = v6.octets();
    let v4 = |at: usize| IpAddr::V4(Ipv4Addr::new(o[at], o[at + 1], o[at + 2], o[at + 3]));
    let segments = v6.segments();
    if let Some(mapped) = v6.to_ipv4_mapped() {
        IpAddr::V4(mapped)
    } else if segments[0] == 0x2002 {
        v4(2)
    } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || (segments[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST)
    {
        // NAT64 (64:ff9b::/96) and IPv4-compatible (::/96 but :: and ::1).
        v4(12)
    } else {
        ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    #[test]
    fn private_documentation_multicast_and_public_peers_are_relayed() {
        for peer in ["10.1.2.3", "192.168.1.1", "100.64.0.1", "203.0.113.9", "224.0.0.1", "8.8.8.8", "2001:db8::1"] {
            assert!(relays_by_default(ip(peer)), "{peer}");
        }
    }

    #[test]
    fn loopback_unspecified_and_scoped_peers_are_refused_in_every_form() {
        for peer in [
            "127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "2002:7f00:1::",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!relays_by_default(ip(peer)), "{peer}");
        }
    }
}
