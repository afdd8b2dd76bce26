//! tern: a STUN/TURN server.
//!
//! ```text
//!  client ──UDP/TCP/TLS──▶ io (workers: listeners, relay sockets, batched syscalls, clock)
//!                            │  handle_*(now, …)            ▲ poll_event: open/close relay sockets,
//!                            ▼                              │   connect peers; allocation, permission
//!                         proto::server::Server ────────────┘   and channel lifecycle for observers
//!                            │  (sans-IO: codec, auth,        poll_transmit: late answers
//!                            │   allocation table, policy)    poll_timeout: the next deadline
//!                            ▼
//!                         proto::resources::Resources: relay ports, quotas, connection admission,
//!                           shared by every worker (io::shared)
//! ```
//!
//! `proto` decides everything and touches nothing: no sockets, no threads, no
//! clock. `io` owns sockets and time and decides nothing about the protocol:
//! after every input it acts on the core's events, sends its transmits, and
//! sleeps until the core's next deadline or a ready socket. The bundled
//! client in `client` reuses the codec, never the server. `testing` is the
//! driver side without sockets, shared by unit tests, fuzz targets and
//! benches.
//!
//! Threat model: every byte from the network is hostile. Parsing never panics
//! and never allocates; unauthenticated packets cost no server memory and are
//! never answered with more than a small fixed overhead. A client address
//! is the connection's own, or the one a PROXY header names on a listener
//! behind a load balancer, believed only from the trusted balancers.
//!
//! `unsafe` is denied everywhere but `io::sys`, the one module that calls the
//! kernel through libc.

#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod io;
pub mod proto;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod testing;
