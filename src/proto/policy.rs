//! Which peers a relay may reach (RFC 8656 §21.3: a TURN server must not become
//! a way into the networks behind it).
//!
//! One check serves every path that can reach a peer (CreatePermission,
//! ChannelBind, Send, and any added later). Addresses are canonicalised first,
//! so `::ffff:127.0.0.1` and `::127.0.0.1` are judged as `127.0.0.1`. The order
//! is: the operator's `deny_peers`, then their `allow_peers`, then the built-in
//! list of special-purpose ranges and tern's own addresses. So `allow_peers`
//! opens exactly what it names, and `deny_peers` always wins.
//!
//! tern's own addresses are refused as peers but for the relay port range:
//! two clients of one server whose ICE agents pair relayed candidates (both
//! behind NATs that only the relay gets through) send from one allocation's
//! relayed address to the other's, and that must relay. What else listens
//! on tern's addresses (its STUN ports, metrics, anything on the host) stays
//! out of reach.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Special-purpose ranges refused by default (RFC 6890 and its successors):
/// loopback, private, shared, link-local, documentation, benchmarking,
/// multicast, reserved, and the IPv6 transition prefixes that can lead back
/// into IPv4 networks.
pub const BUILTIN_DENY: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b::/96", "NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// The rule that refused a peer, for the log line and the counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyRule {
    /// An entry of the operator's `deny_peers`.
    Configured(IpNet),
    /// A built-in special-purpose range.
    Builtin { range: IpNet, name: &'static str },
    /// One of tern's own listen or relay addresses, at a port outside the
    /// relay port range.
    OwnAddress(IpAddr),
}

impl fmt::Display for DenyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Configured(range) => write!(f, "deny_peers {range}"),
            Self::Builtin { range, name } => write!(f, "default deny {range} ({name}); allow with allow_peers"),
            Self::OwnAddress(ip) => {
                write!(f, "tern's own address {ip} outside the relay ports; allow with allow_peers")
            }
        }
    }
}

/// The peer filter.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    own: Vec<IpAddr>,
    /// The relay port range: on tern's own addresses, other allocations.
    relay_ports: Option<(u16, u16)>,
    builtin: Vec<(IpNet, &'static str)>,
}

impl PeerPolicy {
    /// `allow` and `deny` are the operator's lists; `own` are tern's listen
    /// and relay addresses.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>, own: Vec<IpAddr>) -> Self {
        let builtin = BUILTIN_DENY
            .iter()
            .map(|(range, name)| (range.parse().expect("built-in ranges are valid CIDR"), *name))
            .collect();
        let own = own.into_iter().map(canonical).filter(|ip| !ip.is_unspecified()).collect();
        Self { allow, deny, own, relay_ports: None, builtin }
    }

    /// The relay port range, in which tern's own addresses are the relayed
    /// addresses of other allocations, and so peers like any other.
    pub fn with_relay_ports(self, relay_ports: (u16, u16)) -> Self {
        Self { relay_ports: Some(relay_ports), ..self }
    }

    /// Checks the peer `peer` and returns its IP in canonical form, which is
    /// what the relay should use for the peer from then on.
    pub fn check_peer(&self, peer: SocketAddr) -> Result<IpAddr, DenyRule> {
        match self.check(peer.ip()) {
            Err(DenyRule::OwnAddress(ip))
                if self.relay_ports.is_some_and(|(min, max)| (min..=max).contains(&peer.port())) =>
            {
                Ok(ip)
            }
            checked => checked,
        }
    }

    /// Checks the IP `ip` whatever the port: tern's own addresses are
    /// refused. Returns its canonical form.
    pub fn check(&self, ip: IpAddr) -> Result<IpAddr, DenyRule> {
        let ip = canonical(ip);
        if let Some(range) = self.deny.iter().find(|range| range.contains(&ip)) {
            return Err(DenyRule::Configured(*range));
        }
        if self.allow.iter().any(|range| range.contains(&ip)) {
            return Ok(ip);
        }
        if let Some((range, name)) = self.builtin.iter().find(|(range, _)| range.contains(&ip)) {
            return Err(DenyRule::Builtin { range: *range, name });
        }
        if self.own.contains(&ip) {
            return Err(DenyRule::OwnAddress(ip));
        }
        Ok(ip)
    }
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new(), Vec::new())
    }
}

/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6
/// addresses become the IPv4 address they carry; everything else is unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if is_ipv4_compatible(&v6) => {
                let o = v6.octets();
                IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            }
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// `::a.b.c.d`: the first 96 bits are zero. `::` and `::1` are their own
/// addresses (unspecified, loopback) and stay IPv6; both are refused anyway.
fn is_ipv4_compatible(v6: &Ipv6Addr) -> bool {
    let segments = v6.segments();
    segments[..6].iter().all(|s| *s == 0) && !v6.is_unspecified() && !v6.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("literal")
    }

    #[test]
    fn public_addresses_are_allowed() {
        let policy = PeerPolicy::default();
        assert_eq!(policy.check(ip("8.8.8.8")), Ok(ip("8.8.8.8")));
        assert_eq!(policy.check(ip("2606:4700::1111")), Ok(ip("2606:4700::1111")));
    }

    #[test]
    fn every_builtin_range_is_refused_at_both_ends() {
        let policy = PeerPolicy::default();
        for (range, _) in BUILTIN_DENY {
            let range: IpNet = range.parse().expect("valid");
            for addr in [range.network(), range.broadcast()] {
                // IPv4 ends inside IPv6 prefixes like 64:ff9b::/96 are judged
                // as what they canonicalise to; skip those that leave the range.
                if canonical(addr) != addr {
                    continue;
                }
                assert!(
                    matches!(policy.check(addr), Err(DenyRule::Builtin { range: matched, .. }) if matched.contains(&addr)),
                    "{addr} in {range} must be refused by a built-in rule covering it"
                );
            }
        }
    }

    #[test]
    fn ipv4_in_ipv6_forms_cannot_bypass_the_filter() {
        let policy = PeerPolicy::default();
        for form in ["::ffff:127.0.0.1", "::127.0.0.1", "::ffff:10.1.2.3", "::ffff:0.0.0.0", "::169.254.169.254"] {
            assert!(policy.check(ip(form)).is_err(), "{form} must be refused");
        }
        assert_eq!(policy.check(ip("::ffff:8.8.8.8")), Ok(ip("8.8.8.8")));
        assert!(policy.check(ip("64:ff9b::7f00:1")).is_err(), "NAT64 form of loopback");
        assert!(policy.check(ip("2002:7f00:1::")).is_err(), "6to4 form of loopback");
        assert!(policy.check(ip("2001:0:4136:e378:8000:63bf:3fff:fdd2")).is_err(), "Teredo");
        assert!(policy.check(ip("::")).is_err());
        assert!(policy.check(ip("::1")).is_err());
        assert!(policy.check(ip("0.0.0.0")).is_err());
    }

    #[test]
    fn allow_opens_only_what_it_names_and_deny_wins() {
        let policy = PeerPolicy::new(vec![net("127.0.0.0/8"), net("10.0.0.0/8")], vec![net("10.9.0.0/16")], vec![]);
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(ip("127.0.0.1")));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(ip("127.0.0.1")));
        assert_eq!(policy.check(ip("10.1.1.1")), Ok(ip("10.1.1.1")));
        assert_eq!(policy.check(ip("10.9.1.1")), Err(DenyRule::Configured(net("10.9.0.0/16"))));
        assert!(policy.check(ip("192.168.1.1")).is_err());
    }

    #[test]
    fn own_addresses_are_refused_unless_allowed() {
        let policy = PeerPolicy::new(vec![], vec![], vec![ip("198.51.100.7"), ip("0.0.0.0"), ip("2606:4700::5")]);
        assert_eq!(policy.check(ip("2606:4700::5")), Err(DenyRule::OwnAddress(ip("2606:4700::5"))));
        let allowed = PeerPolicy::new(vec![net("2606:4700::5/128")], vec![], vec![ip("2606:4700::5")]);
        assert!(allowed.check(ip("2606:4700::5")).is_ok());
    }

    #[test]
    fn own_addresses_are_peers_in_the_relay_port_range_only() {
        let own = vec![ip("8.8.4.4"), ip("2606:4700::5")];
        let policy = PeerPolicy::new(vec![], vec![], own).with_relay_ports((49152, 65535));
        let peer = |text: &str| text.parse::<SocketAddr>().expect("literal");
        // Another allocation's relayed address: relay to relay on one server.
        assert_eq!(policy.check_peer(peer("[2606:4700::5]:49152")), Ok(ip("2606:4700::5")));
        assert_eq!(policy.check_peer(peer("[2606:4700::5]:65535")), Ok(ip("2606:4700::5")));
        assert_eq!(policy.check_peer(peer("[::ffff:8.8.4.4]:50000")), Ok(ip("8.8.4.4")));
        // tern's STUN port, or anything else on the host.
        for other in ["[2606:4700::5]:3478", "[2606:4700::5]:49151", "8.8.4.4:22"] {
            assert!(matches!(policy.check_peer(peer(other)), Err(DenyRule::OwnAddress(_))), "{other}");
        }
        // The range opens nothing else, and deny_peers still wins.
        assert!(policy.check_peer(peer("127.0.0.1:50000")).is_err());
        let denied = PeerPolicy::new(vec![], vec![net("2606:4700::5/128")], vec![ip("2606:4700::5")])
            .with_relay_ports((49152, 65535));
        assert!(matches!(denied.check_peer(peer("[2606:4700::5]:50000")), Err(DenyRule::Configured(_))));
        // Without a relay range (STUN only), own addresses stay refused.
        let unset = PeerPolicy::new(vec![], vec![], vec![ip("8.8.4.4")]);
        assert!(unset.check_peer(peer("8.8.4.4:50000")).is_err());
    }

    #[test]
    fn deny_rule_explains_itself() {
        let policy = PeerPolicy::default();
        let rule = policy.check(ip("127.0.0.1")).expect_err("loopback");
        assert_eq!(rule.to_string(), "default deny 127.0.0.0/8 (loopback); allow with allow_peers");
    }
}
