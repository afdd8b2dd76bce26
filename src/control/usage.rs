//! Usage records: one per allocation that ended, from the workers' queue to
//! the store's `tern_usage` (or Redis stream), in batches.
//!
//! A worker hands over an ended allocation with a non-blocking send and
//! forgets it; this writer batches them (at most [`MAX_USAGE_BATCH`] per
//! write, at least once a second while any wait) and, while the store is
//! down, keeps up to [`MAX_BUFFERED`] and writes them once it is back. What
//! does not fit is dropped and counted (`tern_usage_records_dropped_total`):
//! the relay never slows for its bookkeeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::io::Workers;
use crate::io::commands::EndedAllocation;
use crate::store::{MAX_NODE, MAX_USAGE_BATCH, Store, UsageRecord};

/// How often records waiting are written, when fewer than a batch wait.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Records kept while the store does not take them; past that, the oldest
/// are dropped.
pub const MAX_BUFFERED: usize = 65_536;

/// Starts the writer: the workers' ended allocations go to `store` as the
/// records of `node` in `realm`.
pub fn spawn(store: Store, node: String, realm: String, workers: Workers, queue: mpsc::Receiver<EndedAllocation>) {
    tokio::spawn(Writer { store, node, realm, workers, pending: VecDeque::new(), failing: false }.run(queue));
}

/// This node's name in usage records: the host name, as the kernel has it.
pub fn node_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let name = if name.is_empty() { "tern" } else { name };
    name.chars().take(MAX_NODE).collect()
}

struct Writer {
    store: Store,
    node: String,
    realm: String,
    workers: Workers,
    pending: VecDeque<UsageRecord>,
    /// The last write failed: say so once, and once when writes work again.
    failing: bool,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<EndedAllocation>) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = queue.recv() => {
                    let Some(ended) = ended else { return };
                    self.keep(ended);
                    if self.pending.len() >= MAX_USAGE_BATCH {
                        self.write().await;
                    }
                }
                _ = flush.tick() => self.write().await,
            }
        }
    }

    fn keep(&mut self, ended: EndedAllocation) {
        if self.pending.len() >= MAX_BUFFERED {
            self.pending.pop_front();
            self.workers.count_usage_dropped(1);
        }
        let traffic = ended.traffic;
        self.pending.push_back(UsageRecord {
            node: self.node.clone(),
            realm: self.realm.clone(),
            username: ended.user.into(),
            transport: ended.tuple.transport,
            client: ended.tuple.client,
            relayed: ended.relayed,
            started: ended.started,
            ended: ended.ended,
            packets_to_peer: traffic.packets_to_peer,
            bytes_to_peer: traffic.bytes_to_peer,
            packets_to_client: traffic.packets_to_client,
            bytes_to_client: traffic.bytes_to_client,
        });
    }

    /// Writes what waits, a batch at a time, until done or the store fails.
    async fn write(&mut self) {
        while !self.pending.is_empty() {
            let count = self.pending.len().min(MAX_USAGE_BATCH);
            let batch: Vec<UsageRecord> = self.pending.range(..count).cloned().collect();
            match self.store.record_usage(&batch).await {
                Ok(()) => {
                    self.pending.drain(..count);
                    if std::mem::take(&mut self.failing) {
                        info!("usage records are written to the store again");
                    }
                }
                Err(e) if e.is_transient() => {
                    if !self.failing {
                        warn!(error = %e, waiting = self.pending.len(), "cannot write usage records; keeping them to retry");
                        self.failing = true;
                    }
                    return;
                }
                Err(e) => {
                    // Refused as they are: retrying would refuse them again.
                    warn!(error = %e, dropped = count, "the store refused usage records; dropped");
                    self.pending.drain(..count);
                    self.workers.count_usage_dropped(count as u64);
                }
            }
        }
    }
}
