//! Requests waiting for the store (`[store]`): an authenticated request
//! whose user this worker has no answer for is parked, the driver is asked
//! to look the user up ([`Event::LookupUser`]), and the request is handled
//! again, from its own bytes, once the answer comes
//! ([`Server::handle_user_lookup`]); its response goes out through
//! [`Server::poll_transmit`].
//!
//! Only a request with a fresh nonce of ours is parked (see
//! `Authenticator::authenticate`), so a lookup costs a client a round trip
//! from a routable address; and what waits is bounded per name and in all,
//! and in time: a store that does not answer within [`LOOKUP_WAIT`], or
//! says it is unavailable, gets the client a 500 (RFC 8489 §14.8: try
//! again later), never a 401 that would say its password is wrong.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::error::RequestError;
use super::respond::{self, Reply};
use super::timers::Timer;
use super::{ClientOutcome, Event, Server, Transmit};
use crate::proto::allocation::ClientHandle;
use crate::proto::lookup::StoreAnswer;
use crate::proto::stun::{Message, TransactionId};
use crate::proto::{FiveTuple, Now};

/// How long a request waits for the store before it is answered 500.
/// Within a UDP client's retransmissions (RFC 8489 §6.2.1: 39.5 s), and
/// short enough for a client on TCP to see an answer.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(5);
/// Requests parked at once, per worker.
pub const MAX_PARKED: usize = 512;
/// Requests parked for one name: a client retransmitting, or a few
/// clients of one user starting at once.
pub const MAX_PARKED_PER_NAME: usize = 8;

/// A request waiting for its user's answer.
struct ParkedRequest {
    tuple: FiveTuple,
    client: ClientHandle,
    tid: TransactionId,
    packet: Box<[u8]>,
    deadline: Instant,
}

/// What waits, by user name.
#[derive(Default)]
pub(super) struct Parked {
    by_name: HashMap<Box<str>, Vec<ParkedRequest>>,
    count: usize,
}

impl Server {
    /// Parks `request`, whose user `name` the store must answer for, and
    /// asks for the lookup unless one is on its way.
    pub(super) fn park(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        name: &str,
        request: &Message<'_>,
    ) -> ClientOutcome {
        let tid = request.transaction_id();
        let waiting = self.parked.by_name.get(name);
        if waiting.is_some_and(|w| w.iter().any(|p| p.tid == tid && p.tuple == *tuple)) {
            // A retransmission: the first copy gets the answer.
            return ClientOutcome::Dropped;
        }
        if self.parked.count >= MAX_PARKED || waiting.is_some_and(|w| w.len() >= MAX_PARKED_PER_NAME) {
            self.stats.lookups_refused += 1;
            debug!(client = %tuple.client, user = name, "request dropped: too many waiting for the store");
            return ClientOutcome::Dropped;
        }
        let deadline = now.instant + LOOKUP_WAIT;
        let parked = ParkedRequest { tuple: *tuple, client, tid, packet: request.as_bytes().into(), deadline };
        let first = waiting.is_none();
        self.parked.by_name.entry(name.into()).or_default().push(parked);
        self.parked.count += 1;
        self.timers.schedule(deadline, Timer::Lookups);
        if first {
            self.ask_store(name);
        }
        ClientOutcome::Deferred
    }

    /// Asks the driver to look `name` up.
    pub(super) fn ask_store(&mut self, name: &str) {
        self.stats.lookups += 1;
        let realm = self.config.turn.as_ref().and_then(|turn| turn.auth.as_ref()).map_or("", |auth| auth.realm());
        self.events.push_back(Event::LookupUser { realm: realm.into(), name: name.into() });
    }

    /// The store's answer for `name`, or `None` when it could not be asked
    /// (down, or the driver's queue to it full). A found or absent user is
    /// remembered, and the requests waiting for it are handled now.
    pub fn handle_user_lookup(&mut self, now: Now, name: &str, answer: Option<StoreAnswer>) {
        if let Some(answer) = answer {
            self.looked_up.learn(name, answer, now.unix);
        }
        let Some(waiting) = self.parked.by_name.remove(name) else { return };
        self.parked.count -= waiting.len();
        for parked in waiting {
            match answer {
                Some(_) => self.replay(now, &parked),
                None => self.answer_unavailable(now, &parked),
            }
        }
    }

    /// The store reported that `name` changed: a remembered answer is
    /// replaced; a name not remembered waits until it is asked for.
    pub fn handle_user_changed(&mut self, now: Now, name: &str, answer: StoreAnswer) {
        self.looked_up.update(name, answer, now.unix);
    }

    /// The store may have changed in ways it did not report (its change
    /// feed reconnected): every remembered answer is asked again before it
    /// is used.
    pub fn handle_store_outdated(&mut self) {
        self.looked_up.outdate_all();
    }

    /// The realm's REST secrets in the store, which the driver read.
    pub fn set_store_secrets(&mut self, secrets: Vec<Vec<u8>>) {
        if let Some(auth) = self.config.turn.as_mut().and_then(|turn| turn.auth.as_mut()) {
            auth.set_store_secrets(secrets);
        }
    }

    /// Answers 500 to the requests that waited past [`LOOKUP_WAIT`].
    pub(super) fn expire_parked(&mut self, now: Now) {
        let mut late = Vec::new();
        self.parked.by_name.retain(|_, waiting| {
            let (gone, kept): (Vec<_>, Vec<_>) =
                std::mem::take(waiting).into_iter().partition(|p| p.deadline <= now.instant);
            late.extend(gone);
            *waiting = kept;
            !waiting.is_empty()
        });
        if !late.is_empty() {
            warn!(requests = late.len(), wait = ?LOOKUP_WAIT, "the store did not answer in time; answered 500");
        }
        self.parked.count -= late.len();
        for parked in late {
            self.answer_unavailable(now, &parked);
        }
    }

    /// Handles a parked request again, now that its user's answer is
    /// remembered; what it answers goes to the outbox.
    fn replay(&mut self, now: Now, parked: &ParkedRequest) {
        let Ok(request) = Message::parse(&parked.packet) else { return };
        let mut reply = Vec::new();
        match self.handle_turn_request(now, &parked.tuple, parked.client, &request, &mut reply) {
            ClientOutcome::Replied => {
                let transmit = Transmit { client: parked.client, tuple: parked.tuple };
                self.outbox.push(transmit, |out| out.extend_from_slice(&reply));
            }
            // An Allocate answered once its relay is open, a Connect once
            // its peer answers; a request dropped by the rate limiter.
            ClientOutcome::Deferred | ClientOutcome::Dropped => {}
            outcome => debug!(client = %parked.tuple.client, ?outcome, "a parked request ended unanswerable"),
        }
    }

    fn answer_unavailable(&mut self, now: Now, parked: &ParkedRequest) {
        self.stats.lookups_failed += 1;
        let Ok(request) = Message::parse(&parked.packet) else { return };
        let answer = Reply::to(&request, None);
        let transmit = Transmit { client: parked.client, tuple: parked.tuple };
        let (config, stats) = (&self.config, &mut self.stats);
        self.outbox.push(transmit, |out| {
            respond::refusal(config, stats, now, &parked.tuple, out, &answer, &RequestError::StoreUnavailable);
        });
    }

    /// Forgets what `tuple` parked: its connection closed, and the driver
    /// may give its handle to another client.
    pub(super) fn forget_parked(&mut self, tuple: &FiveTuple) {
        let mut forgotten = 0;
        self.parked.by_name.retain(|_, waiting| {
            let before = waiting.len();
            waiting.retain(|parked| parked.tuple != *tuple);
            forgotten += before - waiting.len();
            !waiting.is_empty()
        });
        self.parked.count -= forgotten;
    }

    /// Requests waiting for the store.
    pub fn parked_requests(&self) -> usize {
        self.parked.count
    }
}
