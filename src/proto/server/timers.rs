//! The core's deadlines, so the driver sleeps until the next one instead of
//! waking on a fixed tick, and no work is done per second for allocations
//! that have nothing due.
//!
//! A min-heap of (deadline, what). Entries are never removed early: when one
//! comes due, its owner checks against its own state whether anything is
//! really due (an allocation refreshed since, a connection bound) and
//! schedules its next deadline. An allocation keeps at most one entry that
//! it counts as current (`Allocation::scheduled`); others are stale and
//! pass by.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::proto::allocation::AllocationId;
use crate::proto::tcp_relay::ConnectionId;

/// What comes due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The allocation's lifetime, or a permission or channel of it.
    Allocation(AllocationId),
    /// An RFC 6062 peer connection's connect or bind deadline.
    Connection(ConnectionId),
    /// A relay port reservation (EVEN-PORT) runs out.
    Reservations,
    /// The rate limiter forgets sources that went quiet.
    RateLimiter,
    /// A request parked for the store has waited long enough.
    Lookups,
}

#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub(super) fn schedule(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The next entry due at `now`, with its deadline.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry)
    }
}
