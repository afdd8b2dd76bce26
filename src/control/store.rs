//! The store's side of authentication: the workers' lookups answered from
//! the store, the store's changes pushed to the workers, and the realm's
//! REST secrets kept current in every worker.
//!
//! A worker parks a request whose user it has no answer for and asks here
//! ([`Lookup`]); one lookup per name is in flight however many workers and
//! requests wait for it, at most [`MAX_CONCURRENT_LOOKUPS`] at once, each
//! within the store's own timeout. What the store says goes to every
//! worker (a user's next client may land on another), and "cannot say
//! now" to the workers that asked. The change feed keeps the workers' answers
//! right: a changed user's new answer goes to every worker (each keeps it
//! only if it remembers the user), and a feed that lost changes outdates
//! everything.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::io::Workers;
use crate::io::commands::{LOOKUP_QUEUE_LIMIT, Lookup, StoreUpdate};
use crate::proto::lookup::StoreAnswer;
use crate::store::{Change, FeedEvent, Store, StoreError, StoreSettings};

/// Lookups the store is asked at once; more wait their turn (and the
/// requests behind them are answered 500 if the wait runs out).
pub const MAX_CONCURRENT_LOOKUPS: usize = 32;

/// Opens the store and serves the workers from it until the runtime stops.
pub fn spawn(settings: StoreSettings, realm: String, workers: Workers) {
    let (asks, asked) = mpsc::channel(LOOKUP_QUEUE_LIMIT);
    workers.connect_store(asks);
    tokio::spawn(async move {
        let store = match Store::new(&settings) {
            Ok(store) => store,
            Err(e) => {
                // `tern check` and start-up validation read the same
                // settings, so this is a late failure (a CA file removed).
                warn!(error = %e, "the store cannot be used; users in it are answered 500");
                return;
            }
        };
        match store.migrate().await {
            Ok(version) => info!(engine = %store.engine(), schema = version, "using the store for users and secrets"),
            // Down at start: every call retries with backoff.
            Err(e) => warn!(error = %e, "the store is not answering yet; retrying as users are asked for"),
        }
        tokio::spawn(Lookups { store: store.clone(), realm: realm.clone(), workers: workers.clone() }.run(asked));
        follow_changes(store, realm, workers).await;
    });
}

/// The workers' lookups, answered.
struct Lookups {
    store: Store,
    realm: String,
    workers: Workers,
}

impl Lookups {
    async fn run(self, mut asks: mpsc::Receiver<Lookup>) {
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_LOOKUPS));
        // Who waits for each name being looked up.
        let mut waiting: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                ask = asks.recv() => {
                    let Some(Lookup { worker, realm, name }) = ask else { return };
                    if *realm != *self.realm {
                        // Only the configured realm has users here (yet).
                        self.workers.send_store(worker, StoreUpdate::Looked { name, answer: Some(StoreAnswer::Absent) });
                        continue;
                    }
                    match waiting.entry(name) {
                        Entry::Occupied(mut entry) => {
                            if !entry.get().contains(&worker) {
                                entry.get_mut().push(worker);
                            }
                        }
                        Entry::Vacant(entry) => {
                            let name = entry.key().clone();
                            entry.insert(vec![worker]);
                            let (store, realm, permits) = (self.store.clone(), self.realm.clone(), Arc::clone(&permits));
                            running.spawn(async move {
                                let _permit = permits.acquire_owned().await;
                                let answer = look_up(&store, &realm, &name).await;
                                (name, answer)
                            });
                        }
                    }
                }
                Some(done) = running.join_next() => {
                    let Ok((name, answer)) = done else { continue };
                    let asked = waiting.remove(&name).unwrap_or_default();
                    if answer.is_some() {
                        // Every worker learns it: the user's next client may
                        // land on another one, and should not wait either.
                        self.workers.broadcast_store(|| StoreUpdate::Looked { name: name.clone(), answer });
                    } else {
                        for worker in asked {
                            self.workers.send_store(worker, StoreUpdate::Looked { name: name.clone(), answer });
                        }
                    }
                }
            }
        }
    }
}

/// What the store says of `name`: `None` when it cannot say now.
async fn look_up(store: &Store, realm: &str, name: &str) -> Option<StoreAnswer> {
    match store.user_keys(realm, name).await {
        Ok(Some(keys)) => Some(StoreAnswer::Found(keys)),
        Ok(None) => Some(StoreAnswer::Absent),
        // A name the store cannot hold is not in it.
        Err(StoreError::InvalidInput(_)) => Some(StoreAnswer::Absent),
        Err(e @ StoreError::BadValue { .. }) => {
            warn!(user = name, error = %e, "the store's entry for this user is unusable; refused");
            Some(StoreAnswer::Absent)
        }
        Err(e) => {
            warn!(user = name, error = %e, "the store did not answer for a user; answered 500");
            None
        }
    }
}

/// Pushes the store's changes to the workers, and the realm's REST
/// secrets whenever they may have changed.
async fn follow_changes(store: Store, realm: String, workers: Workers) {
    let mut feed = store.subscribe();
    let mut lost = false;
    while let Some(event) = feed.next().await {
        match event {
            FeedEvent::Changed(Change::User { realm: changed, name }) if changed == realm => {
                if let Some(answer) = look_up(&store, &realm, &name).await {
                    let name: Box<str> = name.into();
                    workers.broadcast_store(|| StoreUpdate::Changed { name: name.clone(), answer });
                } else {
                    workers.broadcast_store(|| StoreUpdate::Outdated);
                }
            }
            FeedEvent::Changed(Change::Secrets { realm: changed }) if changed == realm => {
                publish_secrets(&store, &realm, &workers).await;
            }
            FeedEvent::Changed(Change::All) => {
                if lost {
                    info!("the store's change feed is back");
                    lost = false;
                }
                workers.broadcast_store(|| StoreUpdate::Outdated);
                publish_secrets(&store, &realm, &workers).await;
            }
            FeedEvent::Changed(_) => {}
            FeedEvent::Lost(e) => {
                if !lost {
                    warn!(error = %e, "the store's change feed is down; reconnecting (answers are kept for at most their time)");
                    lost = true;
                }
            }
        }
    }
}

async fn publish_secrets(store: &Store, realm: &str, workers: &Workers) {
    match store.rest_secrets(realm).await {
        Ok(secrets) => workers.publish_secrets(&secrets),
        // The secrets in force stay: a store that blinks must not log
        // every REST user out.
        Err(e) => warn!(error = %e, "cannot read the realm's REST secrets from the store; keeping the last ones"),
    }
}
