//! What a worker counts beside its core's [`Stats`], and the report it
//! publishes for metrics and returns when it stops.

use crate::proto::server::Stats;

/// Counters the driver keeps beside the core's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams larger than a receive slot.
    pub truncated: u64,
    /// Datagrams the kernel refused to send (buffer full, unreachable).
    pub send_failures: u64,
    /// Relayed data dropped because a TCP client's queue was full.
    pub tcp_queue_drops: u64,
    pub tcp_accepted: u64,
    pub tcp_closed: u64,
    /// TCP connections closed at once: a connection limit was reached.
    pub tcp_refused: u64,
    /// Connections accepted on TLS listeners (also counted as TCP).
    pub tls_accepted: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS connections closed before their handshake finished: a protocol
    /// error (no common ALPN, version or cipher suite, a bad record) or EOF.
    pub tls_handshake_failures: u64,
    /// TLS connections closed because the handshake took too long.
    pub tls_handshake_timeouts: u64,
    /// TLS connections closed at once: too many handshakes in progress.
    pub tls_refused: u64,
    /// PROXY headers read on PROXY listeners: connections that then went
    /// on as the client the header named.
    pub proxy_headers: u64,
    /// Connections to a PROXY listener closed at once: their peer is not
    /// in `proxy.trusted`.
    pub proxy_untrusted: u64,
    /// Connections to a PROXY listener that started with something else.
    pub proxy_missing: u64,
    /// Connections to a PROXY listener whose header was broken or of a
    /// kind tern does not take.
    pub proxy_malformed: u64,
    /// Connections to a PROXY listener that ended before their header did.
    pub proxy_closed: u64,
    /// Connections to a PROXY listener whose header was not whole within
    /// `proxy.header_timeout`.
    pub proxy_timeouts: u64,
}

/// What a worker reports when it stops.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerReport {
    pub server: Stats,
    pub io: IoStats,
}

impl WorkerReport {
    pub fn add(&mut self, other: &Self) {
        self.server.add(&other.server);
        self.io.truncated += other.io.truncated;
        self.io.send_failures += other.io.send_failures;
        self.io.tcp_queue_drops += other.io.tcp_queue_drops;
        self.io.tcp_accepted += other.io.tcp_accepted;
        self.io.tcp_closed += other.io.tcp_closed;
        self.io.tcp_refused += other.io.tcp_refused;
        self.io.tls_accepted += other.io.tls_accepted;
        self.io.tls_handshakes += other.io.tls_handshakes;
        self.io.tls_handshake_failures += other.io.tls_handshake_failures;
        self.io.tls_handshake_timeouts += other.io.tls_handshake_timeouts;
        self.io.tls_refused += other.io.tls_refused;
        self.io.proxy_headers += other.io.proxy_headers;
        self.io.proxy_untrusted += other.io.proxy_untrusted;
        self.io.proxy_missing += other.io.proxy_missing;
        self.io.proxy_malformed += other.io.proxy_malformed;
        self.io.proxy_closed += other.io.proxy_closed;
        self.io.proxy_timeouts += other.io.proxy_timeouts;
    }
}
