//! The one place tern reads the system clock. The core gets time as an
//! argument; the driver reads it here once per loop turn.

#![allow(clippy::disallowed_methods)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time, for deadlines.
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock seconds since the Unix epoch, for timestamps that leave the
/// process (nonces, REST-API credential expiry).
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Both readings, as the core takes them.
pub fn reading() -> crate::proto::Now {
    crate::proto::Now { instant: now(), unix: unix_secs() }
}
