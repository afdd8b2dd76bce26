//! The worker's RFC 6062 glue: events of relay listeners and of peer/client
//! data connection pairs, a client connection leaving STUN framing after
//! its ConnectionBind, and the hand-over of a connection whose ConnectionBind
//! another worker's core must answer.
//!
//! Kept apart from the loop itself so that `worker.rs` only routes tokens.

use tracing::{debug, trace, warn};

use super::{ACCEPTS_PER_WAKE, THROTTLE_RETRY, Worker};
use crate::io::tcp::{Detached, TcpConnection};
use crate::io::tcp_relay::Pumped;
use crate::io::token::Source;
use crate::proto::Now;
use crate::proto::allocation::RelayId;
use crate::proto::tcp_relay::ConnectionId;

/// Why a client connection stopped being framed as STUN.
pub(super) enum Unframed {
    /// Its ConnectionBind succeeded: it is the client side of pair `id`.
    Bound(ConnectionId),
    /// Its ConnectionBind is for another worker's connection; `frame` is
    /// that request, to be read again there.
    HandOff { owner: usize, frame: Vec<u8> },
}

impl Worker {
    /// Peers connecting to a relayed address (RFC 6062 §5.3): kept when the
    /// core welcomes them, closed at once otherwise.
    pub(super) fn accept_peers(&mut self, relay: RelayId, now: Now) {
        let mut exhausted = true;
        for _ in 0..ACCEPTS_PER_WAKE {
            let (stream, peer) = match self.tcp_relays.accept(relay) {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    exhausted = false;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: retried on the next turn.
                    warn!(error = %e, "TCP relay accept failed");
                    break;
                }
            };
            let Some(id) = self.server.handle_peer_accepted(now, relay, peer) else {
                trace!(%peer, "peer connection closed: not welcome");
                continue;
            };
            if let Err(e) = self.tcp_relays.insert_accepted(self.poll.registry(), id, stream) {
                warn!(error = %e, "cannot register peer connection");
                self.server.handle_tcp_relay_closed(id);
            }
        }
        if exhausted {
            self.pending.push(Source::TcpRelayListener(relay));
        }
    }

    pub(super) fn serve_pair(&mut self, id: ConnectionId, source: Source, now: Now) {
        if let Some(established) = self.tcp_relays.connect_result(self.poll.registry(), id) {
            self.server.handle_peer_connected(now, id, established);
            return;
        }
        // An unbound peer connection is not read: its bytes wait in the
        // kernel until a client data connection is bound to it.
        if self.tcp_relays.is_bound(id) {
            self.pump(id, source, now);
        }
    }

    fn pump(&mut self, id: ConnectionId, source: Source, now: Now) {
        let mut released = Vec::new();
        let mut moved = [0; 2];
        let allowance = self.server.tcp_relay_allowance(now, id);
        let pumped = self.tcp_relays.pump(self.poll.registry(), id, &mut released, allowance, &mut moved);
        if moved != [0; 2] {
            self.server.record_tcp_relay_traffic(id, moved[0], moved[1]);
        }
        match pumped {
            Pumped::Idle => {}
            Pumped::More => self.pending.push(source),
            Pumped::Throttled => {
                if self.throttled.is_empty() {
                    self.next_throttle = now.instant + THROTTLE_RETRY;
                }
                self.throttled.push(source);
            }
            Pumped::Finished => self.server.handle_tcp_relay_closed(id),
        }
        // The core counts the admission of a bound client side and releases
        // it with the pair; the worker counts the connection closed.
        self.stats.tcp_closed += released.len() as u64;
    }

    /// Takes a client connection out of STUN framing: it becomes the client
    /// side of a pair, or goes to the worker that owns its ConnectionBind.
    pub(super) fn unframe_connection(&mut self, key: usize, unframed: Unframed, now: Now) {
        let Some(mut connection) = self.connections.try_remove(key) else { return };
        let _ = self.poll.registry().deregister(&mut connection.stream);
        // Answers queued so far go out framed, over TLS a message per record
        // (see tls.rs), before the stream carries anything else. A client
        // that pipelined more than a socket buffer's worth before its
        // ConnectionBind is not handed over; a bound one gets the rest
        // through its pair.
        let flushed = connection.flush().is_ok() && connection.drained();
        let detached = connection.detach();
        let ip = detached.tuple.client.ip();
        match unframed {
            Unframed::Bound(id) => {
                if self.tcp_relays.attach_client(self.poll.registry(), id, detached, ip) {
                    self.pump(id, Source::ClientSide(id), now);
                } else {
                    // The pair is gone, or the client side could not be
                    // registered: both sides close.
                    self.tcp_relays.close(self.poll.registry(), id);
                    self.server.handle_tcp_relay_closed(id);
                    self.stats.tcp_closed += 1;
                }
            }
            Unframed::HandOff { owner, frame } => {
                let tuple = detached.tuple;
                if !flushed {
                    debug!(client = %tuple.client, "connection closed: could not hand it over");
                    self.server.handle_connection_closed(&tuple);
                    self.stats.tcp_closed += 1;
                    return;
                }
                let mut unread = frame;
                unread.extend_from_slice(&detached.unread);
                trace!(client = %tuple.client, owner, "ConnectionBind handed to its worker");
                if !self.shared.handoffs.send(owner, Detached { unread, ..detached }) {
                    self.server.handle_connection_closed(&tuple);
                    self.stats.tcp_closed += 1;
                }
            }
        }
    }

    /// Adopts the connections other workers handed over: they are served
    /// from their unread bytes on, as if accepted here, and keep the
    /// admission the first worker counted.
    pub(super) fn take_handoffs(&mut self, now: Now) {
        for mut detached in self.shared.handoffs.take(self.id) {
            let entry = self.connections.vacant_entry();
            let key = entry.key();
            let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
            if let Err(e) =
                self.poll.registry().register(&mut detached.stream, Source::Connection(key).token(), interest)
            {
                warn!(error = %e, "cannot register handed-over connection");
                self.server.handle_connection_closed(&detached.tuple);
                self.stats.tcp_closed += 1;
                continue;
            }
            entry.insert(TcpConnection::handed_over(detached, now.instant));
            self.schedule_connection(key, now.instant);
            self.pending.push(Source::Connection(key));
        }
    }
}
