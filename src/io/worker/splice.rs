//! The worker's RFC 6062 glue: events of relay listeners and of peer/client
//! data connection pairs, a client connection leaving STUN framing after
//! its ConnectionBind, the hand-over of a ConnectionBind to the worker that
//! owns its CONNECTION-ID, and the core's late messages to clients.
//!
//! Kept apart from the loop itself so that `worker.rs` only routes tokens.

use mio::Token;
use tracing::{debug, trace, warn};

use super::{ACCEPTS_PER_WAKE, CONN_BASE, THROTTLE_RETRY, Worker};
use crate::io::tcp::{Detached, TcpConnection};
use crate::io::tcp_relay::{Pumped, Source};
use crate::proto::allocation::RelayId;
use crate::proto::server::Server;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, Message, MessageType, Method};
use crate::proto::tcp_relay::{self, ConnectionId};
use crate::proto::{FiveTuple, Now};

/// Why a client connection stopped being framed as STUN.
pub(super) enum Unframed {
    /// Its ConnectionBind succeeded: it is the client side of pair `id`.
    Bound(ConnectionId),
    /// Its ConnectionBind is for another worker's connection; `frame` is
    /// that request, to be read again there.
    HandOff { owner: usize, frame: Vec<u8> },
}

/// The worker that must handle `frame` when it is not this one: a
/// ConnectionBind, on a connection without an allocation here, whose
/// CONNECTION-ID another worker made. The two-byte type is compared before
/// anything is parsed, so other frames cost one comparison.
pub(super) fn handoff_owner(
    server: &Server,
    tuple: &FiveTuple,
    frame: &[u8],
    worker: usize,
    workers: usize,
) -> Option<usize> {
    let bind_request = MessageType::new(Method::CONNECTION_BIND, Class::Request).to_u16().to_be_bytes();
    if workers < 2 || frame.get(..2) != Some(&bind_request[..]) {
        return None;
    }
    let message = Message::parse(frame).ok()?;
    let id = attr::read_u32(message.attribute(AttrType::CONNECTION_ID)?).ok()?;
    let owner = tcp_relay::owner(ConnectionId(id), workers);
    (owner != worker && server.table().find(tuple).is_none()).then_some(owner)
}

impl Worker {
    pub(super) fn serve_tcp_relay(&mut self, token: Token, now: Now) {
        match Source::from_token(token) {
            Some(Source::Listener(relay)) => self.accept_peers(relay, token, now),
            Some(Source::Peer(id) | Source::Data(id)) => self.serve_pair(id, token, now),
            None => {}
        }
    }

    /// Peers connecting to a relayed address (RFC 6062 §5.3): kept when the
    /// core welcomes them, closed at once otherwise.
    fn accept_peers(&mut self, relay: RelayId, token: Token, now: Now) {
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
            self.pending.push(token);
        }
        self.deliver_control();
    }

    fn serve_pair(&mut self, id: ConnectionId, token: Token, now: Now) {
        if let Some(established) = self.tcp_relays.connect_result(self.poll.registry(), id) {
            self.server.handle_peer_connected(now, id, established);
            self.deliver_control();
            return;
        }
        // An unbound peer connection is not read: its bytes wait in the
        // kernel until a client data connection is bound to it.
        if self.tcp_relays.is_bound(id) {
            self.pump(id, token, now);
        }
    }

    fn pump(&mut self, id: ConnectionId, token: Token, now: Now) {
        let mut released = Vec::new();
        let mut moved = [0; 2];
        let allowance = self.server.tcp_relay_allowance(now, id);
        let pumped = self.tcp_relays.pump(self.poll.registry(), id, &mut released, allowance, &mut moved);
        if moved != [0; 2] {
            self.server.record_tcp_relay_traffic(id, moved[0], moved[1]);
        }
        match pumped {
            Pumped::Idle => {}
            Pumped::More => self.pending.push(token),
            Pumped::Throttled => {
                if self.throttled.is_empty() {
                    self.next_throttle = now.instant + THROTTLE_RETRY;
                }
                self.throttled.push(token);
            }
            Pumped::Finished => self.server.handle_tcp_relay_closed(id),
        }
        for ip in released {
            self.shared.release_connection(ip);
            self.stats.tcp_closed += 1;
        }
    }

    /// Sends what the core produced outside of answers to requests.
    pub(super) fn deliver_control(&mut self) {
        while let Some(message) = self.server.poll_control() {
            self.deliver(message.client, &message.tuple, &message.bytes);
        }
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
                    self.pump(id, Source::Data(id).token(), now);
                } else {
                    // The peer side closed between the bind and now.
                    self.server.handle_tcp_relay_closed(id);
                    self.shared.release_connection(ip);
                    self.stats.tcp_closed += 1;
                }
            }
            Unframed::HandOff { owner, frame } => {
                if !flushed {
                    debug!(client = %detached.tuple.client, "connection closed: could not hand it over");
                    self.shared.release_connection(ip);
                    self.stats.tcp_closed += 1;
                    return;
                }
                let client = detached.tuple.client;
                let mut unread = frame;
                unread.extend_from_slice(&detached.unread);
                trace!(%client, owner, "ConnectionBind handed to its worker");
                if !self.shared.handoffs.send(owner, Detached { unread, ..detached }) {
                    self.shared.release_connection(ip);
                    self.stats.tcp_closed += 1;
                }
            }
        }
    }

    /// Adopts the connections other workers handed over: they are served
    /// from their unread bytes on, as if accepted here.
    pub(super) fn take_handoffs(&mut self, now: Now) {
        for mut detached in self.shared.handoffs.take(self.id) {
            let entry = self.connections.vacant_entry();
            let token = Token(CONN_BASE + entry.key());
            let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(&mut detached.stream, token, interest) {
                warn!(error = %e, "cannot register handed-over connection");
                self.shared.release_connection(detached.tuple.client.ip());
                self.stats.tcp_closed += 1;
                continue;
            }
            entry.insert(TcpConnection::handed_over(detached, now.instant));
            self.pending.push(token);
        }
    }
}
