//! The admin API's JSON, version 1: what the server writes and what
//! `tern admin` reads, one definition for both.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::LogLevel;

/// The prefix of every versioned path.
pub const PREFIX: &str = "/api/v1";

/// `GET /api/v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    /// Unix seconds when tern started.
    pub started: u64,
    pub draining: bool,
    /// Generation of the configuration in force: 1 at start, one more per
    /// reload that applied.
    pub config_generation: u64,
    pub config_reload_failures: u64,
    pub allocations: u32,
    pub connections: u32,
    pub workers: Vec<WorkerStatus>,
    /// Counters summed over the workers, as of their last publication (at
    /// most a second old).
    pub relayed_packets_to_peer: u64,
    pub relayed_packets_to_client: u64,
    pub relayed_bytes_to_peer: u64,
    pub relayed_bytes_to_client: u64,
    pub allocations_created: u64,
    pub auth_failures: u64,
    /// Packets dropped, by reason (the metrics' `dropped_packets`).
    pub dropped: Vec<Dropped>,
    pub revoked: usize,
}

/// One worker in [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: usize,
    /// Loop turns completed.
    pub turns: u64,
    /// Milliseconds since its last loop turn ended (an idle worker sleeps:
    /// this grows without anything being wrong; `/healthz` wakes it).
    pub last_turn_ms_ago: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    pub reason: String,
    pub packets: u64,
}

/// One allocation, in `GET /api/v1/allocations` and
/// `GET /api/v1/allocations/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Its serial: unique in this process's life.
    pub id: u64,
    /// "" when relaying is anonymous.
    pub user: String,
    pub realm: String,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// How the client reaches tern: `udp`, `tcp` or `tls`.
    pub transport: String,
    /// `udp`, or `tcp` for an RFC 6062 allocation.
    pub relay_transport: String,
    pub relayed: Vec<SocketAddr>,
    pub age_secs: u64,
    pub remaining_secs: u64,
    pub permissions: usize,
    pub channels: usize,
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    /// Bytes per second relayed (both ways) over the last 5 to 10 seconds
    /// (since it was created, in its first 10), whoever lists it how often.
    pub rate_bps: u64,
}

/// `GET /api/v1/allocations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocationPage {
    /// How many allocations match the filters, beyond this page too.
    pub matching: usize,
    pub allocations: Vec<Allocation>,
    /// The `after` of the next page, when there may be one (oldest-first
    /// order only).
    pub next: Option<u64>,
}

/// `POST /api/v1/revocations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revoke {
    /// A user, or one TURN REST username (`EXPIRY:USER`). A user covers
    /// every REST username with that user part.
    pub name: String,
}

/// The answer to a revocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    pub name: String,
    pub allocations_ended: usize,
}

/// `GET /api/v1/revocations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revocations {
    pub names: Vec<String>,
}

/// `POST /api/v1/drain`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Seconds before what is left is ended; none: `drain_timeout`, or
    /// until the last allocation ends.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

/// The answer to a drain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Draining {
    pub allocations: u32,
    pub deadline_secs: Option<u64>,
}

/// The answer to `POST /api/v1/reload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    pub generation: u64,
    /// Changed settings that take a restart, and kept their running values.
    pub needs_restart: Vec<String>,
}

/// `PUT /api/v1/log`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: LogLevel,
}

/// Every error: the status code says what kind, `error` says what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Error {
    pub error: String,
}
