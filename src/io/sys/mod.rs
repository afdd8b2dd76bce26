//! The system calls std and mio do not offer, and the only module with
//! `unsafe` (the crate denies it everywhere else): batched UDP, socket
//! options, the ICMP error queue, the process's limits and identity, and
//! the host's interface addresses.
//!
//! It is written against libc rather than quinn-udp because quinn-udp sends
//! one destination per syscall (GSO); a relay answers many clients from one
//! socket, which is what `sendmmsg` batches. Every `unsafe` block says why
//! it is sound; the rest of the crate calls safe functions only.

pub mod batch;
pub mod icmp;
pub mod interfaces;
pub mod poll;
pub mod process;
mod sockaddr;
pub mod sockopt;

// config.rs checks `user` and `group` when the file is loaded.
pub use process::lookup_identity;

/// Room for one PKTINFO control message, or one extended error and its
/// offender address, of either family, with alignment.
const CONTROL_LEN: usize = 64;

/// Control-message buffer aligned as `cmsghdr` requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct ControlBuf([u8; CONTROL_LEN]);
