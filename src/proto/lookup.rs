//! The users one worker has looked up in the store (`[store]`), as it
//! remembers them: an answer per name, found or absent, for a while.
//!
//! The store is a network away, so the core never asks it: an
//! authenticated request for a name this cache cannot answer is parked by
//! the server (`server::lookup`) while the control plane asks the store,
//! and its answer comes back here. What is remembered is bounded in time
//! (an answer that is not refreshed is asked again after [`FOUND_FOR`] or
//! [`ABSENT_FOR`]) and in count ([`MAX_REMEMBERED`]), except for the users
//! of this worker's allocations: those stay, so a Refresh, CreatePermission
//! or ConnectionBind of a live allocation never waits on the store. The
//! store's change feed keeps them right (the control plane pushes a changed
//! user's new answer, and [`LookedUpUsers::outdate_all`] when it may have
//! missed changes).

use std::collections::HashMap;

use crate::proto::auth::UserKeys;

/// How long a found user is used without asking again, while it has no
/// allocation here. The change feed pushes changes sooner; this bounds how
/// long a missed change lasts.
pub const FOUND_FOR: u64 = 600;
/// How long "no such user" is believed: short, so a user added in the
/// store gets in soon even if the feed missed it, yet long enough that a
/// client retrying a wrong name does not reach the store every time.
pub const ABSENT_FOR: u64 = 10;
/// Names remembered without an allocation, at most, per worker.
pub const MAX_REMEMBERED: usize = 16_384;

/// What the store said of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAnswer {
    Found(UserKeys),
    Absent,
}

impl StoreAnswer {
    pub fn keys(self) -> Option<UserKeys> {
        match self {
            Self::Found(keys) => Some(keys),
            Self::Absent => None,
        }
    }
}

/// What the cache knows of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Use this answer.
    Answer(StoreAnswer),
    /// Use this answer, and ask the store again in the background: the user
    /// has allocations here, so it is not made to wait.
    AnswerAndRefresh(StoreAnswer),
    /// Ask the store, and wait.
    Unknown,
}

#[derive(Debug)]
struct Remembered {
    answer: StoreAnswer,
    /// Unix seconds.
    learned: u64,
    /// This worker's allocations of the user.
    allocations: u32,
    /// The store may have changed since `learned`.
    outdated: bool,
    /// A background lookup is on its way.
    refreshing: bool,
}

impl Remembered {
    fn fresh(&self, now_unix: u64) -> bool {
        let lasts = match self.answer {
            StoreAnswer::Found(_) => FOUND_FOR,
            StoreAnswer::Absent => ABSENT_FOR,
        };
        !self.outdated && now_unix < self.learned.saturating_add(lasts)
    }
}

/// One worker's answers from the store.
#[derive(Debug, Default)]
pub struct LookedUpUsers {
    users: HashMap<Box<str>, Remembered>,
    /// Entries with no allocation, so the bound applies to them only.
    unpinned: usize,
}

impl LookedUpUsers {
    /// What is known of `name` at `now_unix`. For a user with allocations
    /// here whose answer is old, the first call says to refresh it and the
    /// next ones do not, until the answer comes.
    pub fn get(&mut self, name: &str, now_unix: u64) -> Known {
        let Some(entry) = self.users.get_mut(name) else { return Known::Unknown };
        if entry.fresh(now_unix) {
            return Known::Answer(entry.answer);
        }
        if entry.allocations == 0 {
            self.users.remove(name);
            self.unpinned -= 1;
            return Known::Unknown;
        }
        if entry.refreshing {
            Known::Answer(entry.answer)
        } else {
            entry.refreshing = true;
            Known::AnswerAndRefresh(entry.answer)
        }
    }

    /// Remembers the store's answer for `name`, learned at `now_unix`.
    pub fn learn(&mut self, name: &str, answer: StoreAnswer, now_unix: u64) {
        if let Some(entry) = self.users.get_mut(name) {
            entry.answer = answer;
            entry.learned = now_unix;
            entry.outdated = false;
            entry.refreshing = false;
            return;
        }
        if self.unpinned >= MAX_REMEMBERED {
            self.make_room(now_unix);
        }
        let entry = Remembered { answer, learned: now_unix, allocations: 0, outdated: false, refreshing: false };
        self.users.insert(name.into(), entry);
        self.unpinned += 1;
    }

    /// Updates `name` if it is remembered: a change the store reported.
    /// A name not remembered here is left to be asked when it comes.
    pub fn update(&mut self, name: &str, answer: StoreAnswer, now_unix: u64) {
        if self.users.contains_key(name) {
            self.learn(name, answer, now_unix);
        }
    }

    /// The store may have changed in ways nobody reported: every answer is
    /// asked again before it is used (in the background for the users of
    /// allocations).
    pub fn outdate_all(&mut self) {
        self.users.retain(|_, entry| entry.allocations > 0);
        self.unpinned = 0;
        for entry in self.users.values_mut() {
            entry.outdated = true;
            entry.refreshing = false;
        }
    }

    /// An allocation of `name` was made here: it stays remembered until the
    /// last one ends. A name the store did not answer (a configured user, a
    /// REST username) is not remembered, and this does nothing.
    pub fn pin(&mut self, name: &str) {
        if let Some(entry) = self.users.get_mut(name) {
            if entry.allocations == 0 {
                self.unpinned -= 1;
            }
            entry.allocations += 1;
        }
    }

    /// An allocation of `name` ended.
    pub fn unpin(&mut self, name: &str) {
        if let Some(entry) = self.users.get_mut(name)
            && entry.allocations > 0
        {
            entry.allocations -= 1;
            if entry.allocations == 0 {
                self.unpinned += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Forgets stale answers without allocations, and if that is not
    /// enough, an eighth of the others (whichever the map yields first):
    /// the scan is paid once per eighth of the bound, not per insertion.
    fn make_room(&mut self, now_unix: u64) {
        self.users.retain(|_, entry| entry.allocations > 0 || entry.fresh(now_unix));
        let mut unpinned = self.users.values().filter(|entry| entry.allocations == 0).count();
        let mut evict = unpinned.saturating_sub(MAX_REMEMBERED - MAX_REMEMBERED / 8);
        self.users.retain(|_, entry| {
            if evict > 0 && entry.allocations == 0 {
                evict -= 1;
                unpinned -= 1;
                return false;
            }
            true
        });
        self.unpinned = unpinned;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn found() -> StoreAnswer {
        StoreAnswer::Found(UserKeys::from_md5_key([7; 16]))
    }

    #[test]
    fn answers_last_their_time_then_are_asked_again() {
        let mut users = LookedUpUsers::default();
        assert_eq!(users.get("alice", NOW), Known::Unknown);
        users.learn("alice", found(), NOW);
        users.learn("mallory", StoreAnswer::Absent, NOW);
        assert_eq!(users.get("alice", NOW + FOUND_FOR - 1), Known::Answer(found()));
        assert_eq!(users.get("mallory", NOW + ABSENT_FOR - 1), Known::Answer(StoreAnswer::Absent));
        assert_eq!(users.get("mallory", NOW + ABSENT_FOR), Known::Unknown);
        assert_eq!(users.get("alice", NOW + FOUND_FOR), Known::Unknown);
        assert!(users.is_empty());
    }

    #[test]
    fn a_user_with_allocations_is_never_made_to_wait() {
        let mut users = LookedUpUsers::default();
        users.learn("alice", found(), NOW);
        users.pin("alice");
        users.pin("alice");
        let later = NOW + FOUND_FOR;
        assert_eq!(users.get("alice", later), Known::AnswerAndRefresh(found()));
        assert_eq!(users.get("alice", later), Known::Answer(found()), "one refresh at a time");
        users.learn("alice", StoreAnswer::Absent, later);
        assert_eq!(users.get("alice", later), Known::Answer(StoreAnswer::Absent));
        users.unpin("alice");
        assert_eq!(users.get("alice", later + ABSENT_FOR), Known::AnswerAndRefresh(StoreAnswer::Absent));
        users.unpin("alice");
        assert_eq!(users.get("alice", later + ABSENT_FOR), Known::Unknown, "no allocation left");
    }

    #[test]
    fn outdating_drops_the_unpinned_and_refreshes_the_pinned() {
        let mut users = LookedUpUsers::default();
        users.learn("alice", found(), NOW);
        users.learn("bob", found(), NOW);
        users.pin("bob");
        users.outdate_all();
        assert_eq!(users.get("alice", NOW), Known::Unknown);
        assert_eq!(users.get("bob", NOW), Known::AnswerAndRefresh(found()));
        users.update("alice", found(), NOW);
        assert_eq!(users.get("alice", NOW), Known::Unknown, "update adds nobody");
        users.update("bob", StoreAnswer::Absent, NOW);
        assert_eq!(users.get("bob", NOW), Known::Answer(StoreAnswer::Absent));
    }

    #[test]
    fn the_bound_holds_for_the_unpinned_only() {
        let mut users = LookedUpUsers::default();
        users.learn("pinned", found(), NOW);
        users.pin("pinned");
        for n in 0..MAX_REMEMBERED + 10 {
            users.learn(&format!("user{n}"), found(), NOW);
        }
        assert!(users.len() <= MAX_REMEMBERED + 1, "{}", users.len());
        assert_eq!(users.get("pinned", NOW), Known::Answer(found()));
        assert_eq!(users.get("user1", NOW + FOUND_FOR), Known::Unknown);
    }
}
