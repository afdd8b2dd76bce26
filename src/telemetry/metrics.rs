//! Prometheus metrics (`[metrics] listen`, `--metrics-listen`): the workers'
//! counters, summed at each scrape, and a few gauges, served as OpenMetrics
//! text at `GET /metrics`.
//!
//! Workers publish their counters within a second of their changing
//! (`io::shared::Shared`), so a scrape never touches a worker's loop and
//! nothing is shared per packet.
//! The encoding is prometheus-client's; `crate::control` serves it, on
//! `metrics.listen` and on the admin listener.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::io::{MetricsSnapshot, WorkerReport};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin API counts, beside the workers' counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdminCounters {
    /// Requests without the right token (401).
    pub unauthorized: u64,
    /// Requests refused unchecked: their source sent too many wrong tokens (429).
    pub rate_limited: u64,
}

type Labels = Vec<(&'static str, &'static str)>;

/// Relayed packets dropped, by the `reason` label of `dropped_packets`
/// (the admin API's status lists the same).
pub fn dropped_by_reason(counters: &WorkerReport) -> [(&'static str, u64); 4] {
    let (server, io) = (&counters.server, &counters.io);
    [
        ("no_permission", server.dropped_no_permission),
        ("no_allocation_or_channel", server.dropped_client_data),
        ("over_bandwidth", server.over_bandwidth),
        ("client_queue_full", io.tcp_queue_drops),
    ]
}

/// The snapshot in the OpenMetrics text format.
pub fn render(snapshot: &MetricsSnapshot, admin: &AdminCounters) -> String {
    let mut registry = Registry::with_prefix("tern");
    let server = &snapshot.counters.server;
    let io = &snapshot.counters.io;

    let counters: [(&str, &str, u64); 32] = [
        ("stun_requests", "STUN requests received and parsed", server.requests),
        ("binding_responses", "Binding success responses sent", server.binding_responses),
        ("error_responses", "STUN error responses sent, challenges included", server.error_responses),
        ("auth_failures", "401 and 438 answers: challenges, wrong credentials, stale nonces", server.auth_failures),
        ("indications", "STUN indications received", server.indications),
        ("malformed_packets", "Packets that were neither well-formed STUN nor ChannelData", server.malformed),
        ("bad_fingerprints", "STUN messages with a FINGERPRINT that did not match", server.bad_fingerprint),
        ("unexpected_responses", "STUN responses received, which a server ignores", server.unexpected_responses),
        ("allocations_created", "TURN allocations created", server.allocations_created),
        ("allocations_deleted", "TURN allocations deleted or expired", server.allocations_deleted),
        ("peers_forbidden", "Peers refused by the peer policy, on any path", server.peers_forbidden),
        ("rate_limited", "Unauthenticated requests not answered: their source was over its rate", server.rate_limited),
        ("icmp_relayed", "ICMP errors about relayed datagrams passed on to clients", server.icmp_relayed),
        (
            "tcp_peer_connections",
            "RFC 6062 peer connections made, by Connect or by a peer",
            server.tcp_peer_connections,
        ),
        ("tcp_peer_refused", "RFC 6062 inbound peer connections closed at once", server.tcp_peer_refused),
        ("tcp_peer_failures", "RFC 6062 Connects that failed and connections never bound", server.tcp_peer_failures),
        ("truncated_datagrams", "Datagrams larger than a receive slot", io.truncated),
        ("send_failures", "Datagrams the kernel refused to send", io.send_failures),
        ("tls_handshakes", "TLS handshakes completed", io.tls_handshakes),
        ("tls_handshake_failures", "TLS connections closed before their handshake finished", io.tls_handshake_failures),
        (
            "tls_handshake_timeouts",
            "TLS connections closed because the handshake took too long",
            io.tls_handshake_timeouts,
        ),
        ("tls_refused", "TLS connections closed at once: too many handshakes in progress", io.tls_refused),
        ("tls_connections_accepted", "Connections accepted on TLS listeners", io.tls_accepted),
        ("tcp_relayed_bytes", "Bytes RFC 6062 data connections carried, both ways", server.tcp_relayed_bytes),
        ("proxy_headers", "PROXY headers read: connections that went on as the client they named", io.proxy_headers),
        ("allocations_ended", "TURN allocations ended by an operator (admin API)", server.allocations_ended),
        ("revoked_refusals", "Requests refused with 401 because their user was revoked", server.revoked_refusals),
        ("store_lookups", "Users asked of the store", server.lookups),
        (
            "store_lookups_failed",
            "Requests answered 500 because the store did not answer for their user",
            server.lookups_failed,
        ),
        (
            "store_lookups_refused",
            "Requests dropped because too many were waiting for the store",
            server.lookups_refused,
        ),
        ("admin_unauthorized", "Admin API requests without the right token (401)", admin.unauthorized),
        (
            "admin_rate_limited",
            "Admin API requests refused unchecked: their source sent too many wrong tokens (429)",
            admin.rate_limited,
        ),
    ];
    for (name, help, value) in counters {
        let counter: Counter = Counter::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }

    let by_direction = |to_peer: u64, to_client: u64| {
        let family = Family::<Labels, Counter>::default();
        family.get_or_create(&vec![("direction", "to_peer")]).inc_by(to_peer);
        family.get_or_create(&vec![("direction", "to_client")]).inc_by(to_client);
        family
    };
    registry.register(
        "relayed_packets",
        "Packets relayed over UDP",
        by_direction(server.relayed_to_peer, server.relayed_to_client),
    );
    registry.register(
        "relayed_bytes",
        "Payload bytes relayed over UDP",
        by_direction(server.relayed_bytes_to_peer, server.relayed_bytes_to_client),
    );

    let dropped = Family::<Labels, Counter>::default();
    for (reason, value) in dropped_by_reason(&snapshot.counters) {
        dropped.get_or_create(&vec![("reason", reason)]).inc_by(value);
    }
    registry.register("dropped_packets", "Relayed packets dropped, by reason", dropped);

    let connections = Family::<Labels, Counter>::default();
    for (event, value) in [("accepted", io.tcp_accepted), ("closed", io.tcp_closed), ("refused", io.tcp_refused)] {
        connections.get_or_create(&vec![("event", event)]).inc_by(value);
    }
    registry.register("tcp_connections", "Client TCP and TLS connections, by event", connections);

    let proxy_failures = Family::<Labels, Counter>::default();
    for (reason, value) in [
        ("untrusted", io.proxy_untrusted),
        ("missing", io.proxy_missing),
        ("malformed", io.proxy_malformed),
        ("closed", io.proxy_closed),
        ("timeout", io.proxy_timeouts),
    ] {
        proxy_failures.get_or_create(&vec![("reason", reason)]).inc_by(value);
    }
    registry.register(
        "proxy_failures",
        "Connections to PROXY listeners closed before their header named a client, by reason",
        proxy_failures,
    );

    let gauges: [(&str, &str, u64); 4] = [
        ("allocations", "TURN allocations now", u64::from(snapshot.allocations)),
        ("open_connections", "Client TCP and TLS connections open now", u64::from(snapshot.connections)),
        ("workers", "Worker threads", snapshot.workers as u64),
        ("draining", "1 while draining (SIGUSR1): no new allocations", u64::from(snapshot.draining)),
    ];
    for (name, help, value) in gauges {
        let gauge: Gauge = Gauge::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, gauge);
    }

    let reloads = &snapshot.reloads;
    let reload_gauges: [(&str, &str, u64); 3] = [
        (
            "config_generation",
            "Generation of the configuration in force: 1 at start, one more per reload that applied",
            reloads.generation,
        ),
        (
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last reload that applied (the start, before any)",
            reloads.last_success,
        ),
        (
            "config_last_reload_failure_timestamp_seconds",
            "Unix time of the last reload that failed and changed nothing; 0 before any",
            reloads.last_failure,
        ),
    ];
    for (name, help, value) in reload_gauges {
        let gauge: Gauge = Gauge::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, gauge);
    }
    let failures: Counter = Counter::default();
    failures.inc_by(reloads.failures);
    registry.register("config_reload_failures", "Reloads whose configuration did not load: nothing changed", failures);

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{ReloadStatus, WorkerReport};

    #[test]
    fn the_snapshot_renders_as_openmetrics_text() {
        let mut counters = WorkerReport::default();
        counters.server.requests = 7;
        counters.server.relayed_to_peer = 3;
        counters.server.relayed_bytes_to_client = 1200;
        counters.server.dropped_no_permission = 2;
        counters.io.tcp_accepted = 5;
        counters.io.proxy_headers = 6;
        counters.io.proxy_timeouts = 1;
        let reloads =
            ReloadStatus { generation: 3, failures: 1, last_success: 1_800_000_000, last_failure: 1_700_000_000 };
        let snapshot =
            MetricsSnapshot { counters, allocations: 4, connections: 1, workers: 2, draining: false, reloads };
        let text = render(&snapshot, &AdminCounters { unauthorized: 2, rate_limited: 0 });
        for line in [
            "tern_stun_requests_total 7",
            "tern_relayed_packets_total{direction=\"to_peer\"} 3",
            "tern_relayed_bytes_total{direction=\"to_client\"} 1200",
            "tern_dropped_packets_total{reason=\"no_permission\"} 2",
            "tern_tcp_connections_total{event=\"accepted\"} 5",
            "tern_proxy_headers_total 6",
            "tern_admin_unauthorized_total 2",
            "tern_allocations_ended_total 0",
            "tern_proxy_failures_total{reason=\"timeout\"} 1",
            "tern_proxy_failures_total{reason=\"untrusted\"} 0",
            "tern_allocations 4",
            "tern_open_connections 1",
            "tern_workers 2",
            "tern_draining 0",
            "tern_config_generation 3",
            "tern_config_reload_failures_total 1",
            "tern_config_last_reload_success_timestamp_seconds 1800000000",
            "tern_config_last_reload_failure_timestamp_seconds 1700000000",
            "# TYPE tern_allocations gauge",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
    }
}
