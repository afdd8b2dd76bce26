//! `tern load`: a load generator for any TURN server, and the tool tern's
//! benchmarks are measured with.
//!
//! Relay mode sets up N allocations (401, Allocate, CreatePermission,
//! ChannelBind), then sends payloads through them to a built-in echo peer and
//! back, either open-loop at a fixed rate per allocation (latency measured
//! from the *intended* send time, so a stalled server cannot hide its stall:
//! no coordinated omission) or closed-loop with K packets in flight per
//! allocation. Alloc mode is an allocation storm: 401 → Allocate → Refresh 0,
//! as fast as the server answers.
//!
//! With `--server-pid`, the server's CPU time (utime + stime from
//! /proc/PID/stat) over the measured interval gives packets (or allocations)
//! per server CPU-second, the figure that is fair when client and server
//! share a machine.

mod peer;
mod relay;
mod storm;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::turn::Credentials;
use crate::proto::Transport;
pub use peer::EchoPeer;

/// Smallest payload: magic, allocation index, sequence number, timestamp.
pub const MIN_PAYLOAD: usize = 24;
/// The payload's first four bytes, so stray datagrams are not counted.
const MAGIC: [u8; 4] = *b"tern";

/// How packets are paced in relay mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// Open loop: this many packets per second per allocation.
    Rate(f64),
    /// Closed loop: this many packets in flight per allocation.
    Window(u32),
}

/// What to run.
#[derive(Clone, Debug)]
pub enum Mode {
    Relay {
        allocations: usize,
        pacing: Pacing,
        size: usize,
        send_indication: bool,
        /// An echo server to use instead of the built-in peer.
        peer: Option<SocketAddr>,
        /// Where the built-in peer listens (port 0: any).
        peer_listen: Option<SocketAddr>,
        peer_threads: usize,
        /// No TURN at all: bare payloads to a plain UDP forwarder, the
        /// baseline the benchmarks compare against.
        raw: bool,
        /// Local addresses for client sockets, in turn; empty: any.
        client_ips: Vec<IpAddr>,
    },
    /// An allocation storm with this many allocations in progress at once.
    Alloc { concurrency: usize },
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub server: SocketAddr,
    pub transport: Transport,
    pub credentials: Credentials,
    pub mode: Mode,
    pub duration: Duration,
    /// Client threads.
    pub threads: usize,
    pub server_pid: Option<u32>,
    /// Print a progress line on stderr while running.
    pub progress: bool,
    pub timeout: Duration,
}

/// The outcome of a run, printed as text or JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub server: String,
    pub transport: String,
    pub mode: String,
    pub duration_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc: Option<AllocReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<CpuReport>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SetupReport {
    pub requested: usize,
    pub succeeded: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// Failures by STUN error code, or "timeout" / "io".
    pub failures: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RelayReport {
    pub size: usize,
    pub sent: u64,
    /// Delivered to the peer (counted by the built-in peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_peer: Option<u64>,
    /// Delivered back to the client.
    pub to_client: u64,
    pub to_peer_pps: Option<f64>,
    pub to_client_pps: f64,
    pub to_client_mbit_s: f64,
    pub lost: u64,
    pub loss_percent: f64,
    pub rtt_ms: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AllocReport {
    pub completed: u64,
    pub per_second: f64,
    pub failures: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuReport {
    pub seconds: f64,
    pub cores: f64,
    /// Packets delivered (both directions) or allocations completed per
    /// second of server CPU.
    pub work_per_cpu_second: f64,
}

/// Runs the load and returns the report.
pub fn run(config: &LoadConfig) -> Result<Report, String> {
    let mut report = Report {
        server: config.server.to_string(),
        transport: config.transport.to_string(),
        duration_secs: config.duration.as_secs_f64(),
        ..Report::default()
    };
    match &config.mode {
        Mode::Relay { .. } => relay::run(config, &mut report)?,
        Mode::Alloc { concurrency } => storm::run(config, *concurrency, &mut report)?,
    }
    Ok(report)
}

/// A server's CPU time so far, from /proc/PID/stat (utime + stime).
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("server pid {pid}: {e}"))?;
    // The command name may contain spaces; fields are counted after its ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok()).ok_or("malformed /proc stat");
    // utime and stime are fields 14 and 15 of stat(5); after ')' they are 12th and 13th.
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / crate::io::sys::process::clock_ticks_per_second() as f64)
}

/// Measures the server's CPU over a run.
struct CpuMeter {
    pid: Option<u32>,
    start: f64,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> Result<Self, String> {
        Ok(Self { pid, start: pid.map(cpu_seconds).transpose()?.unwrap_or(0.0) })
    }

    fn finish(&self, wall: Duration, work: f64) -> Result<Option<CpuReport>, String> {
        let Some(pid) = self.pid else { return Ok(None) };
        let seconds = cpu_seconds(pid)? - self.start;
        Ok(Some(CpuReport {
            seconds,
            cores: seconds / wall.as_secs_f64().max(1e-9),
            work_per_cpu_second: if seconds > 0.0 { work / seconds } else { 0.0 },
        }))
    }
}

impl Report {
    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut text =
            format!("tern load: {} over {}, {}, {:.1} s\n", self.server, self.transport, self.mode, self.duration_secs);
        if let Some(setup) = &self.setup {
            text.push_str(&format!(
                "setup:        {}/{} allocations in {:.2} s ({:.0}/s), failures: {}\n",
                setup.succeeded,
                setup.requested,
                setup.seconds,
                setup.per_second,
                failures_text(&setup.failures)
            ));
        }
        if let Some(relay) = &self.relay {
            if let (Some(to_peer), Some(pps)) = (relay.to_peer, relay.to_peer_pps) {
                text.push_str(&format!("client→peer:  {to_peer} delivered of {} sent ({pps:.0} pps)\n", relay.sent));
            }
            text.push_str(&format!(
                "peer→client:  {} delivered ({:.0} pps, {:.1} Mbit/s of {} B payloads)\n",
                relay.to_client, relay.to_client_pps, relay.to_client_mbit_s, relay.size
            ));
            text.push_str(&format!("loss:         {} of {} ({:.3}%)\n", relay.lost, relay.sent, relay.loss_percent));
            let r = &relay.rtt_ms;
            text.push_str(&format!(
                "rtt:          p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms\n",
                r.p50, r.p90, r.p99, r.p999, r.max
            ));
        }
        if let Some(alloc) = &self.alloc {
            text.push_str(&format!(
                "allocations:  {} completed ({:.0}/s), failures: {}\n",
                alloc.completed,
                alloc.per_second,
                failures_text(&alloc.failures)
            ));
        }
        if let Some(cpu) = &self.server_cpu {
            let unit = if self.alloc.is_some() { "allocations" } else { "packets" };
            text.push_str(&format!(
                "server cpu:   {:.2} s ({:.2} cores); {:.0} {unit} per server CPU-second\n",
                cpu.seconds, cpu.cores, cpu.work_per_cpu_second
            ));
        }
        text
    }
}

fn failures_text(failures: &BTreeMap<String, u64>) -> String {
    if failures.is_empty() {
        return "none".into();
    }
    failures.iter().map(|(why, count)| format!("{why}: {count}")).collect::<Vec<_>>().join(", ")
}

/// Writes a payload of `size` bytes: magic, allocation, sequence, timestamp.
fn write_payload(out: &mut [u8], allocation: u32, sequence: u64, timestamp_ns: u64) {
    out[..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&allocation.to_be_bytes());
    out[8..16].copy_from_slice(&sequence.to_be_bytes());
    out[16..24].copy_from_slice(&timestamp_ns.to_be_bytes());
}

/// Reads back (allocation, sequence, timestamp) from an echoed payload.
fn read_payload(payload: &[u8]) -> Option<(u32, u64, u64)> {
    if payload.len() < MIN_PAYLOAD || payload[..4] != MAGIC {
        return None;
    }
    Some((
        u32::from_be_bytes(payload[4..8].try_into().ok()?),
        u64::from_be_bytes(payload[8..16].try_into().ok()?),
        u64::from_be_bytes(payload[16..24].try_into().ok()?),
    ))
}

/// A failure's key in the failure counts.
fn failure_key(error: &super::turn::TurnError) -> String {
    match error {
        super::turn::TurnError::Rejected { code, .. } => code.to_string(),
        super::turn::TurnError::Timeout(_) => "timeout".into(),
        super::turn::TurnError::Io(_) => "io".into(),
        super::turn::TurnError::Integrity => "integrity".into(),
        super::turn::TurnError::Invalid(_) => "invalid".into(),
        super::turn::TurnError::TryAlternate(_) => "300".into(),
        super::turn::TurnError::Unsupported(_) => "unsupported".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let mut buf = [0u8; 100];
        write_payload(&mut buf, 7, 9, 11);
        assert_eq!(read_payload(&buf), Some((7, 9, 11)));
        assert_eq!(read_payload(&buf[..23]), None);
        buf[0] = b'x';
        assert_eq!(read_payload(&buf), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let seconds = cpu_seconds(std::process::id()).expect("own /proc stat");
        assert!(seconds >= 0.0);
    }
}
