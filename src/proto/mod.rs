//! The sans-IO protocol core: codec, credentials, allocation state.
//!
//! Nothing in here touches a socket, a thread or the system clock: time comes
//! in as an argument and bytes come in as slices, so every rule (expiry, error
//! codes, quotas) is testable in microseconds and the fuzzer can reach all of
//! it. The IO driver in `crate::io` moves bytes and time into [`server::Server`].

#![forbid(unsafe_code)]

pub mod allocation;
pub mod auth;
pub mod channel_data;
pub mod coturn;
pub mod demux;
pub mod error;
pub mod lookup;
pub mod nat_discovery;
pub mod policy;
pub mod port_pool;
pub mod proxy;
pub mod rate_limit;
pub mod resources;
pub mod server;
pub mod stun;
pub mod table;
pub mod tcp_relay;

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

/// A reading of the clock, passed into every input of the core: monotonic
/// time for deadlines, wall-clock seconds for what leaves the process
/// (nonce timestamps, REST credential expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub unix: u64,
}

/// The transport protocol between a client and tern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// Whether the transport is a byte stream (framed by length, ChannelData padded).
    pub fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The client's 5-tuple (RFC 8656 §2): client address, server address and
/// transport. It names an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}
