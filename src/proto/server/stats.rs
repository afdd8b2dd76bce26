//! The counters of one worker's core, summed across workers by the driver
//! for metrics and the shutdown report. Drops are counted by reason, never
//! logged above trace: a flood costs an increment per packet.

/// Counters kept by one server; the driver sums them across workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// STUN requests received and parsed.
    pub requests: u64,
    pub binding_responses: u64,
    /// Error responses sent, all codes (authentication challenges included).
    pub error_responses: u64,
    /// 401 and 438 answers: challenges, wrong credentials, stale nonces.
    pub auth_failures: u64,
    pub indications: u64,
    /// Packets that were not well-formed STUN or ChannelData.
    pub malformed: u64,
    pub bad_fingerprint: u64,
    /// Success or error responses sent to us, which a server ignores.
    pub unexpected_responses: u64,
    pub allocations_created: u64,
    pub allocations_deleted: u64,
    /// Peers refused by the peer policy, on any path.
    pub peers_forbidden: u64,
    pub relayed_to_peer: u64,
    pub relayed_to_client: u64,
    /// Payload bytes of those packets.
    pub relayed_bytes_to_peer: u64,
    pub relayed_bytes_to_client: u64,
    /// Packets from peers without a permission.
    pub dropped_no_permission: u64,
    /// Send indications and ChannelData with no allocation, channel or permission.
    pub dropped_client_data: u64,
    /// Unauthenticated requests not answered: their source was over its budget.
    pub rate_limited: u64,
    /// Relayed packets dropped: the allocation was over `max_bps`.
    pub over_bandwidth: u64,
    /// ICMP errors about relayed datagrams passed on to clients.
    pub icmp_relayed: u64,
    /// RFC 6062 peer data connections made, by Connect or by a peer.
    pub tcp_peer_connections: u64,
    /// Inbound peer connections closed at once: no permission, or the
    /// allocation's `max_tcp_peer_connections` reached.
    pub tcp_peer_refused: u64,
    /// Connects answered 447, and connections not bound in time.
    pub tcp_peer_failures: u64,
    /// Bytes RFC 6062 data connections carried, both ways.
    pub tcp_relayed_bytes: u64,
    /// Allocations an operator ended (the admin API).
    pub allocations_ended: u64,
    /// Requests refused because their user was revoked.
    pub revoked_refusals: u64,
    /// Users asked of the store (`[store]`), waited for or refreshed.
    pub lookups: u64,
    /// Requests answered 500: the store did not answer for their user.
    pub lookups_failed: u64,
    /// Requests dropped: too many were waiting for the store already.
    pub lookups_refused: u64,
}

impl Stats {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.allocations_ended += other.allocations_ended;
        self.revoked_refusals += other.revoked_refusals;
        self.lookups += other.lookups;
        self.lookups_failed += other.lookups_failed;
        self.lookups_refused += other.lookups_refused;
        self.binding_responses += other.binding_responses;
        self.error_responses += other.error_responses;
        self.auth_failures += other.auth_failures;
        self.indications += other.indications;
        self.malformed += other.malformed;
        self.bad_fingerprint += other.bad_fingerprint;
        self.unexpected_responses += other.unexpected_responses;
        self.allocations_created += other.allocations_created;
        self.allocations_deleted += other.allocations_deleted;
        self.peers_forbidden += other.peers_forbidden;
        self.relayed_to_peer += other.relayed_to_peer;
        self.relayed_to_client += other.relayed_to_client;
        self.relayed_bytes_to_peer += other.relayed_bytes_to_peer;
        self.relayed_bytes_to_client += other.relayed_bytes_to_client;
        self.dropped_no_permission += other.dropped_no_permission;
        self.dropped_client_data += other.dropped_client_data;
        self.rate_limited += other.rate_limited;
        self.over_bandwidth += other.over_bandwidth;
        self.icmp_relayed += other.icmp_relayed;
        self.tcp_peer_connections += other.tcp_peer_connections;
        self.tcp_peer_refused += other.tcp_peer_refused;
        self.tcp_peer_failures += other.tcp_peer_failures;
        self.tcp_relayed_bytes += other.tcp_relayed_bytes;
    }
}
