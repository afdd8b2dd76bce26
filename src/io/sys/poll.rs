//! Waiting on one socket with poll(2), for threads that block on it rather
//! than run an event loop.

use std::io;
use std::os::fd::RawFd;

/// One descriptor to wait on with [`wait_readable`], for threads that block
/// on a single socket (the load generator's peers) rather than run an event
/// loop.
pub struct PollFd(libc::pollfd);

impl PollFd {
    pub fn new(fd: RawFd) -> Self {
        Self(libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
    }
}

/// Waits up to `timeout` for the descriptor to become readable.
pub fn wait_readable(poll_fd: &mut PollFd, timeout: std::time::Duration) -> io::Result<bool> {
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, and its count, passed to poll(2).
    let ready = unsafe { libc::poll(&mut poll_fd.0, 1, millis) };
    if ready < 0 { Err(io::Error::last_os_error()) } else { Ok(ready > 0) }
}
