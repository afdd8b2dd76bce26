//! Time passing (RFC 8656 §7, §9, §12; RFC 6062 §5.2, §5.3): allocations
//! whose lifetime ran out, permissions and channel bindings that expire,
//! the end of a binding's five-minute guard, peer connections that were
//! not answered or bound in time, port reservations, and the rate
//! limiter's memory of quiet sources.
//!
//! Expiry is also checked on every use, so a late timer never lets an
//! expired permission or binding relay; the timers make the state go, and
//! tell observers, on time.

use std::time::Duration;

use super::timers::Timer;
use super::{DeleteReason, Event, Server};
use crate::proto::Now;
use crate::proto::allocation::{AllocationId, Expired};

/// How often the rate limiter forgets sources whose buckets are full again,
/// while it remembers any. Its table is bounded anyway; this only returns
/// the memory of sources that went quiet.
pub(super) const FORGET_SOURCES_EVERY: Duration = Duration::from_secs(10);

impl Server {
    /// Does what is due at `now`: see [`Self::poll_timeout`] for when.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some((at, timer)) = self.timers.pop_due(now.instant) {
            match timer {
                Timer::Allocation(id) => {
                    let current = self.table.get(id).is_some_and(|a| a.is_live() && a.scheduled == Some(at));
                    if current {
                        self.expire_allocation(now, id);
                    }
                }
                Timer::Connection(id) => self.expire_tcp_connection(now, id),
                Timer::Reservations => self.resources.expire_reservations(now.instant),
                Timer::Lookups => self.expire_parked(now),
                Timer::RateLimiter => {
                    self.limiter.forget_idle(now.instant);
                    self.limiter_scheduled = !self.limiter.is_empty();
                    if self.limiter_scheduled {
                        self.timers.schedule(now.instant + FORGET_SOURCES_EVERY, Timer::RateLimiter);
                    }
                }
            }
        }
    }

    /// Schedules the allocation's next deadline, unless an entry at or
    /// before it is already in the timers.
    pub(super) fn schedule(&mut self, id: AllocationId) {
        let Some(allocation) = self.table.get_mut(id) else { return };
        let next = allocation.next_deadline();
        if allocation.scheduled.is_none_or(|scheduled| next < scheduled) {
            allocation.scheduled = Some(next);
            self.timers.schedule(next, Timer::Allocation(id));
        }
    }

    /// Its timer came due: the allocation ends, or what of it expired goes
    /// and its next deadline is scheduled.
    fn expire_allocation(&mut self, now: Now, id: AllocationId) {
        let Some(allocation) = self.table.get_mut(id) else { return };
        allocation.scheduled = None;
        if allocation.is_expired(now.instant) {
            self.delete(id, DeleteReason::Expired);
            return;
        }
        self.expire_entries(now, id);
        self.schedule(id);
    }

    /// Forgets the allocation's expired permissions and channel bindings,
    /// and tells observers.
    pub(super) fn expire_entries(&mut self, now: Now, id: AllocationId) {
        let Some(allocation) = self.table.get_mut(id) else { return };
        let events = &mut self.events;
        allocation.expire_entries(now.instant, |expired| {
            events.push_back(match expired {
                Expired::Permission(peer) => Event::PermissionExpired { id, peer },
                Expired::Channel(channel, peer) => Event::ChannelExpired { id, channel, peer },
            });
        });
    }
}
