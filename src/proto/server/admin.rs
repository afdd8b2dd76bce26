//! What an operator can ask of a core while it runs (the admin API, through
//! the worker's command queue): a page of its allocations, one allocation
//! ended now, and users revoked.
//!
//! Allocations are named by their serial, which no other allocation of the
//! process ever takes (an [`AllocationId`] is a slot, reused once freed), so
//! an operator who ends "allocation 17" never ends the one that took its
//! slot since. A serial also names its worker: serials step by the number
//! of workers from the worker's index.
//!
//! A revocation is a name: a user, or one TURN REST username
//! (`EXPIRY:USER`). Revoking a user covers every REST username with that
//! user part, so a leaked REST credential and the account behind it can be
//! shut out alike. A revoked name's allocations end at once, and its
//! requests are refused with 401 as an unknown user's are, until it is
//! un-revoked. Each worker keeps its own copy, filled by one command to
//! every worker, so the authentication path reads no shared state.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tracing::info;

use super::{DeleteReason, Server};
use crate::proto::allocation::{Allocation, AllocationId, Traffic};
use crate::proto::{FiveTuple, Now, Transport};

/// Revoked names kept per worker: far more than an operator revokes by hand,
/// few enough that a script gone wrong cannot grow a worker without bound.
pub const MAX_REVOCATIONS: usize = 65_536;

/// Which allocations a listing returns, and in which order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationQuery {
    /// Only this user's (a REST username's user part matches too).
    pub user: Option<String>,
    /// Only those of this client IP.
    pub client_ip: Option<IpAddr>,
    /// Only those whose client speaks this transport.
    pub transport: Option<Transport>,
    pub order: Order,
    /// With [`Order::Serial`]: only serials above this one (the cursor of
    /// the page before).
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// The order of a listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first, by serial: stable across pages.
    #[default]
    Serial,
    /// Most bytes relayed (both ways) first: the busiest allocations.
    Traffic,
}

/// One allocation as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationSummary {
    pub serial: u64,
    /// The user that created it ("" when relaying is anonymous).
    pub user: Box<str>,
    pub tuple: FiveTuple,
    /// The addresses clients are told, by family.
    pub relayed: Vec<SocketAddr>,
    /// An RFC 6062 allocation, relaying over TCP connections.
    pub tcp: bool,
    pub age: Duration,
    pub remaining: Duration,
    pub permissions: usize,
    pub channels: usize,
    pub traffic: Traffic,
}

/// A page of one core's allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationListing {
    /// How many live allocations the query matches, beyond the page too.
    pub matching: usize,
    /// At most `limit` of them, in the query's order.
    pub page: Vec<AllocationSummary>,
}

/// The names revoked in one core.
#[derive(Debug, Default)]
pub(super) struct Revocations(HashSet<Box<str>>);

impl Revocations {
    /// Whether `username`, or the user part of the REST username it is, is
    /// revoked. Costs nothing while none is.
    pub(super) fn covers(&self, username: &str) -> bool {
        !self.0.is_empty() && (self.0.contains(username) || rest_user(username).is_some_and(|u| self.0.contains(u)))
    }
}

/// The user part of a TURN REST username (`EXPIRY:USER`), if it is one.
pub(super) fn rest_user(username: &str) -> Option<&str> {
    match username.split_once(':') {
        Some((expiry, user)) if !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) => Some(user),
        _ => None,
    }
}

/// Why a revocation was not recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("{MAX_REVOCATIONS} names are revoked already; un-revoke some first")]
    Full,
    #[error("a revocation names a user or a REST username, not the empty name")]
    Empty,
}

impl Server {
    /// The live allocations `query` matches, a page of them in its order.
    pub fn allocations(&self, now: Now, query: &AllocationQuery) -> AllocationListing {
        let matching: Vec<(AllocationId, &Allocation)> =
            self.table.iter().filter(|(_, a)| a.is_live() && !a.is_expired(now.instant) && matches(a, query)).collect();
        let mut selected: Vec<&Allocation> = match query.order {
            Order::Serial => {
                let after = query.after.unwrap_or(0);
                matching.iter().map(|(_, a)| *a).filter(|a| query.after.is_none() || a.serial > after).collect()
            }
            Order::Traffic => matching.iter().map(|(_, a)| *a).collect(),
        };
        let limit = query.limit.min(selected.len());
        let key = |a: &Allocation| match query.order {
            Order::Serial => (0, a.serial),
            Order::Traffic => (u64::MAX - total_bytes(&a.traffic), a.serial),
        };
        // The page only: a partial sort, so a small page of many
        // allocations costs one pass over them.
        if limit > 0 && limit < selected.len() {
            selected.select_nth_unstable_by_key(limit - 1, |a| key(a));
        }
        selected.truncate(limit);
        selected.sort_unstable_by_key(|a| key(a));
        AllocationListing { matching: matching.len(), page: selected.into_iter().map(|a| summary(a, now)).collect() }
    }

    /// Ends the allocation `serial` now, if this core holds it live; logged
    /// and counted, and observers hear of it as of any deletion.
    pub fn end_allocation(&mut self, serial: u64) -> bool {
        let Some(id) = self.live_by_serial(serial) else { return false };
        self.stats.allocations_ended += 1;
        self.delete(id, DeleteReason::Ended);
        true
    }

    /// Revokes `name` (a user, or one REST username): its allocations end
    /// now, and its requests are refused until [`Self::unrevoke`]. Returns
    /// how many allocations ended.
    pub fn revoke(&mut self, name: &str) -> Result<usize, RevokeError> {
        if name.is_empty() {
            return Err(RevokeError::Empty);
        }
        if !self.revocations.0.contains(name) {
            if self.revocations.0.len() >= MAX_REVOCATIONS {
                return Err(RevokeError::Full);
            }
            self.revocations.0.insert(name.into());
        }
        let ended: Vec<AllocationId> = self
            .table
            .iter()
            .filter(|(_, a)| *a.username == *name || rest_user(&a.username) == Some(name))
            .map(|(id, _)| id)
            .collect();
        for &id in &ended {
            self.delete(id, DeleteReason::Revoked);
        }
        if !ended.is_empty() {
            info!(name, allocations = ended.len(), "revoked: its allocations ended");
        }
        Ok(ended.len())
    }

    /// Lets `name` in again; whether it was revoked.
    pub fn unrevoke(&mut self, name: &str) -> bool {
        self.revocations.0.remove(name)
    }

    /// The names revoked, in no order.
    pub fn revoked(&self) -> impl Iterator<Item = &str> {
        self.revocations.0.iter().map(|name| &**name)
    }

    fn live_by_serial(&self, serial: u64) -> Option<AllocationId> {
        self.table.iter().find(|(_, a)| a.serial == serial && a.is_live()).map(|(id, _)| id)
    }
}

fn matches(allocation: &Allocation, query: &AllocationQuery) -> bool {
    let user = query.user.as_deref();
    user.is_none_or(|user| *allocation.username == *user || rest_user(&allocation.username) == Some(user))
        && query.client_ip.is_none_or(|ip| allocation.tuple.client.ip() == ip)
        && query.transport.is_none_or(|transport| allocation.tuple.transport == transport)
}

fn total_bytes(traffic: &Traffic) -> u64 {
    traffic.bytes_to_peer.saturating_add(traffic.bytes_to_client)
}

fn summary(allocation: &Allocation, now: Now) -> AllocationSummary {
    AllocationSummary {
        serial: allocation.serial,
        user: allocation.username.clone(),
        tuple: allocation.tuple,
        relayed: allocation.relayed_addresses().map(|r| r.advertised).collect(),
        tcp: allocation.tcp_relay,
        age: now.instant.saturating_duration_since(allocation.created),
        remaining: allocation.expires.saturating_duration_since(now.instant),
        permissions: allocation.permission_count(),
        channels: allocation.channel_count(),
        traffic: allocation.traffic,
    }
}
