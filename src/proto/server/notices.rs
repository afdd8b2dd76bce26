//! One warning the first time a limit or a default refuses something,
//! naming the setting to change: the defaults that are stricter than
//! coturn's trip operators who come from it (a static user shared by an
//! app's clients meets `user_quota` at its eleventh allocation), and the
//! 486, 508 or 403 on the wire does not say which key caused it.
//!
//! Each cause is told once per worker's core, and what is remembered is
//! bounded: users up to [`MAX_USERS`], peer rules up to [`MAX_PEER_RULES`],
//! so a flood of new usernames or peers cannot grow it. Counters
//! (`Stats`) keep counting every refusal; these lines only point at the
//! key.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use tracing::warn;

use crate::proto::coturn;
use crate::proto::policy::DenyRule;
use crate::proto::resources::ConnectionLimit;

/// Users told about `user_quota`; past this, one last line says that
/// further users are not named.
pub(super) const MAX_USERS: usize = 1024;
/// Peer rules told about: the built-in ranges and tern's own addresses,
/// which are few, with room to spare.
pub(super) const MAX_PEER_RULES: usize = 64;

/// A limit told about at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Once {
    Permissions = 1,
    Channels = 1 << 1,
    RateLimit = 1 << 2,
    TcpPerIp = 1 << 3,
    TcpTotal = 1 << 4,
    TooManyUsers = 1 << 5,
}

/// What this core has already told the operator.
#[derive(Debug, Default)]
pub(super) struct Notices {
    /// [`Once`] bits already logged.
    told: u8,
    users: HashSet<Box<str>>,
    peer_rules: HashSet<IpNet>,
}

impl Notices {
    /// `quota_key` (a user, the user part of a REST username, or the
    /// client's IP when relaying anonymously) was refused an allocation by
    /// `user_quota`. True when a line was written.
    pub(super) fn user_quota(&mut self, quota_key: &str, limit: u32) -> bool {
        if self.users.contains(quota_key) {
            return false;
        }
        if self.users.len() >= MAX_USERS {
            if self.first(Once::TooManyUsers) {
                warn!(
                    users = MAX_USERS,
                    setting = "user_quota",
                    limit,
                    "more users reached their allocation quota; they are not named one by one any more"
                );
                return true;
            }
            return false;
        }
        self.users.insert(quota_key.into());
        warn!(
            user = quota_key,
            limit,
            setting = "user_quota",
            "allocation refused with 486: the user holds user_quota allocations; clients that share one user \
             need a higher user_quota, or 0 for no limit (coturn's default); logged once per user"
        );
        true
    }

    /// An allocation was refused a permission by `max_permissions`.
    pub(super) fn max_permissions(&mut self, limit: usize) -> bool {
        if !self.first(Once::Permissions) {
            return false;
        }
        warn!(
            limit,
            setting = "max_permissions",
            "permission refused with 508: the allocation holds max_permissions permissions; raise \
             max_permissions (coturn allows {}); logged once",
            coturn::MAX_PERMISSIONS
        );
        true
    }

    /// An allocation was refused a channel by `max_channels`.
    pub(super) fn max_channels(&mut self, limit: usize) -> bool {
        if !self.first(Once::Channels) {
            return false;
        }
        warn!(
            limit,
            setting = "max_channels",
            "channel refused with 508: the allocation holds max_channels channels; raise max_channels \
             (coturn has no cap but the 4096 channel numbers); logged once"
        );
        true
    }

    /// An answer to an unauthenticated request from `source` was dropped by
    /// `rate_limit`.
    pub(super) fn rate_limited(&mut self, source: IpAddr, per_second: f64) -> bool {
        if !self.first(Once::RateLimit) {
            return false;
        }
        warn!(
            %source,
            limit = per_second,
            setting = "rate_limit",
            "unauthenticated answers dropped: the source is over rate_limit answers per second; many \
             clients behind one address need a higher rate_limit, or 0 for no limit (coturn's default); \
             logged once"
        );
        true
    }

    /// A TCP or TLS connection from `source` was closed by a connection cap.
    pub(super) fn connection_refused(&mut self, source: IpAddr, limit: ConnectionLimit) -> bool {
        match limit {
            ConnectionLimit::PerIp { limit } => {
                if !self.first(Once::TcpPerIp) {
                    return false;
                }
                warn!(
                    %source,
                    limit,
                    setting = "max_tcp_per_ip",
                    "connection refused: the source holds max_tcp_per_ip connections; many clients behind \
                     one address need a higher max_tcp_per_ip, or 0 for no limit (coturn's default); \
                     logged once"
                );
                true
            }
            ConnectionLimit::Total { limit } => {
                if !self.first(Once::TcpTotal) {
                    return false;
                }
                warn!(
                    %source,
                    limit,
                    setting = "max_tcp_connections",
                    "connection refused: the server holds max_tcp_connections connections; raise \
                     max_tcp_connections, or 0 for no limit; logged once"
                );
                true
            }
        }
    }

    /// `peer` was refused by `rule`. Told once per rule, and only for rules
    /// of tern's own making (a built-in range, tern's own address) that
    /// refuse a peer coturn would relay to: what the operator configured,
    /// or what coturn refuses too, is no surprise.
    pub(super) fn peer_refused(&mut self, peer: IpAddr, rule: &DenyRule) -> bool {
        let range = match rule {
            DenyRule::Configured(_) => return false,
            DenyRule::Builtin { range, .. } => *range,
            DenyRule::OwnAddress(ip) => IpNet::from(*ip),
        };
        if !coturn::relays_by_default(peer) || self.peer_rules.len() >= MAX_PEER_RULES || !self.peer_rules.insert(range)
        {
            return false;
        }
        warn!(
            %peer,
            %rule,
            setting = "allow_peers",
            "peer refused with 403 by a default coturn does not have; add the range (or the address) to \
             allow_peers to relay to it; logged once per range"
        );
        true
    }

    /// Whether `once` is told for the first time now; marks it told.
    fn first(&mut self, once: Once) -> bool {
        let bit = once as u8;
        let first = self.told & bit == 0;
        self.told |= bit;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    #[test]
    fn each_user_is_told_once_and_the_set_is_bounded() {
        let mut notices = Notices::default();
        assert!(notices.user_quota("alice", 10));
        assert!(!notices.user_quota("alice", 10), "alice again");
        assert!(notices.user_quota("bob", 10));
        for n in 2..MAX_USERS {
            assert!(notices.user_quota(&format!("user{n}"), 10));
        }
        assert_eq!(notices.users.len(), MAX_USERS);
        assert!(notices.user_quota("one-too-many", 10), "one line says the rest go unnamed");
        assert!(!notices.user_quota("and-another", 10));
        assert!(!notices.user_quota("alice", 10));
        assert_eq!(notices.users.len(), MAX_USERS, "nothing more is remembered");
    }

    #[test]
    fn each_limit_is_told_once() {
        let mut notices = Notices::default();
        assert!(notices.max_permissions(64));
        assert!(!notices.max_permissions(64));
        assert!(notices.max_channels(64));
        assert!(!notices.max_channels(64));
        assert!(notices.rate_limited(ip("192.0.2.1"), 500.0));
        assert!(!notices.rate_limited(ip("192.0.2.2"), 500.0), "one line for every source");
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert!(notices.connection_refused(a, ConnectionLimit::PerIp { limit: 500 }));
        assert!(!notices.connection_refused(b, ConnectionLimit::PerIp { limit: 500 }));
        assert!(notices.connection_refused(a, ConnectionLimit::Total { limit: 9 }), "another cause");
        assert!(!notices.connection_refused(a, ConnectionLimit::Total { limit: 9 }));
    }

    #[test]
    fn peer_rules_are_told_once_each_and_only_where_coturn_relays() {
        let mut notices = Notices::default();
        let private: IpNet = "10.0.0.0/8".parse().expect("literal");
        let rule = DenyRule::Builtin { range: private, name: "private" };
        assert!(notices.peer_refused(ip("10.1.1.1"), &rule));
        assert!(!notices.peer_refused(ip("10.2.2.2"), &rule), "same range");
        let own = DenyRule::OwnAddress(ip("198.51.100.7"));
        assert!(notices.peer_refused(ip("198.51.100.7"), &own));
        // coturn refuses these too, or the operator asked for it.
        let loopback = DenyRule::Builtin { range: "127.0.0.0/8".parse().expect("literal"), name: "loopback" };
        assert!(!notices.peer_refused(ip("127.0.0.1"), &loopback));
        let metadata = DenyRule::Builtin { range: "169.254.0.0/16".parse().expect("literal"), name: "link-local" };
        assert!(!notices.peer_refused(ip("169.254.169.254"), &metadata));
        assert!(
            !notices.peer_refused(ip("203.0.113.1"), &DenyRule::Configured("203.0.113.0/24".parse().expect("literal")))
        );
        assert_eq!(notices.peer_rules.len(), 2);
    }
}
