//! The allocation table of one worker: a slab of allocations addressed by
//! [`AllocationId`], and the index from the client's 5-tuple to its allocation
//! (RFC 8656 §2.2: one allocation per 5-tuple).
//!
//! The id doubles as the relay socket's name in the driver, so a packet from a
//! peer reaches its allocation with an index, not a hash. The 5-tuple index is
//! keyed by values clients choose, so it keeps std's randomly keyed SipHash.
//! Insert and remove update slab and index together.

use std::collections::HashMap;

use slab::Slab;

use crate::proto::FiveTuple;
use crate::proto::allocation::{Allocation, AllocationId};

#[derive(Default)]
pub struct AllocationTable {
    allocations: Slab<Allocation>,
    by_tuple: HashMap<FiveTuple, AllocationId>,
}

impl AllocationTable {
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// The id the next [`Self::insert`] will use, so the relay socket can be
    /// opened under it before the allocation exists.
    pub fn next_id(&self) -> AllocationId {
        AllocationId(self.allocations.vacant_key())
    }

    /// Adds an allocation; its 5-tuple must not be in use.
    pub fn insert(&mut self, allocation: Allocation) -> AllocationId {
        let tuple = allocation.tuple;
        let id = AllocationId(self.allocations.insert(allocation));
        let previous = self.by_tuple.insert(tuple, id);
        debug_assert!(previous.is_none(), "one allocation per 5-tuple");
        id
    }

    pub fn remove(&mut self, id: AllocationId) -> Option<Allocation> {
        let allocation = self.allocations.try_remove(id.0)?;
        self.by_tuple.remove(&allocation.tuple);
        Some(allocation)
    }

    pub fn find(&self, tuple: &FiveTuple) -> Option<AllocationId> {
        self.by_tuple.get(tuple).copied()
    }

    pub fn get(&self, id: AllocationId) -> Option<&Allocation> {
        self.allocations.get(id.0)
    }

    pub fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        self.allocations.get_mut(id.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (AllocationId, &Allocation)> {
        self.allocations.iter().map(|(key, allocation)| (AllocationId(key), allocation))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (AllocationId, &mut Allocation)> {
        self.allocations.iter_mut().map(|(key, allocation)| (AllocationId(key), allocation))
    }

    /// Whether the slab and the index agree: every allocation is indexed
    /// under its own 5-tuple and nothing else is. For tests and fuzzing.
    pub fn is_consistent(&self) -> bool {
        self.by_tuple.len() == self.allocations.len()
            && self.allocations.iter().all(|(key, a)| self.by_tuple.get(&a.tuple) == Some(&AllocationId(key)))
    }
}
