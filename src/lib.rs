//! tern: a STUN/TURN server.
//!
//! ```text
//!  client ──UDP/TCP/TLS──▶ io (listeners, relay sockets, batched syscalls, clock)
//!                              │ bytes + time in, bytes + actions out
//!                              ▼
//!                         proto (sans-IO: codec, auth, allocation table, policy)
//! ```
//!
//! `proto` decides everything and touches nothing: no sockets, no threads, no
//! clock. `io` owns sockets and time and decides nothing about the protocol.
//! The bundled client in `client` reuses the codec, never the server.
//!
//! Threat model: every byte from the network is hostile. Parsing never panics
//! and never allocates; unauthenticated packets cost no server memory and are
//! never answered with more than a small fixed overhead.
//!
//! `unsafe` is denied everywhere but `io::sys`, the one module of system
//! calls.

#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod io;
pub mod proto;
pub mod telemetry;
pub mod testing;
