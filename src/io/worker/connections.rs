//! The worker's client connections over TCP and TLS: accepting them under
//! the connection limits and the TLS handshake cap (on a PROXY listener,
//! once the header named the client: see `proxied.rs`), reading and
//! answering their frames, and closing them when they end, fail, stay
//! silent without an allocation, or take too long over their handshake or
//! their PROXY header.

use std::cmp::Reverse;
use std::io;
use std::time::Instant;

use mio::Interest;
use rustls::ServerConnection;
use tracing::{debug, trace, warn};

use super::{ACCEPTS_PER_WAKE, HANDLE_TCP, TCP_IDLE_TIMEOUT, Worker, splice};
use crate::io::out::Via;
use crate::io::stream::Stream;
use crate::io::tcp::{Closed, Next, ReadStatus, TcpConnection};
use crate::io::token::Source;
use crate::proto::allocation::ClientHandle;
use crate::proto::server::ClientOutcome;
use crate::proto::{FiveTuple, Now, Transport};

/// A connection the handshake cap or the connection limits turned away;
/// counted and logged already.
pub(super) struct Refused;

impl Worker {
    /// Accepts connections on the TCP or TLS listener `index`.
    pub(super) fn accept(&mut self, transport: Transport, index: usize, now: Now) {
        let source = match transport {
            Transport::Tls => Source::TlsListener(index),
            _ => Source::TcpListener(index),
        };
        for _ in 0..ACCEPTS_PER_WAKE {
            let (listener, bound) = match transport {
                Transport::Tls => &self.tls_listeners[index],
                _ => &self.tcp_listeners[index],
            };
            let bound = *bound;
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: stop accepting this turn; the
                    // listener is retried on the next.
                    warn!(error = %e, "tcp accept failed");
                    self.pending.push(source);
                    return;
                }
            };
            let proxied = self.proxy.as_ref().filter(|proxy| proxy.speaks(transport, bound));
            if proxied.is_some_and(|proxy| !proxy.trusts(peer.ip())) {
                // Closing at once: anyone else could name any address.
                self.stats.proxy_untrusted += 1;
                debug!(%peer, %transport, "connection refused: not from a trusted PROXY source (proxy.trusted)");
                continue;
            }
            let proxied = proxied.is_some();
            let server = stream.local_addr().unwrap_or(bound);
            // Until a PROXY header names the client, the peer stands for it.
            let tuple = FiveTuple { client: peer, server, transport };
            let _ = stream.set_nodelay(true);
            let key = self.connections.vacant_key();
            let token = Source::Connection(key).token();
            if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
                warn!(error = %e, "cannot register tcp connection");
                continue;
            }
            let connection = if proxied {
                TcpConnection::awaiting_proxy_header(Stream::new(stream, None), tuple, now.instant)
            } else {
                match self.admit(&tuple) {
                    Ok(tls) => TcpConnection::new(Stream::new(stream, tls), tuple, now.instant),
                    Err(Refused) => {
                        // Closing at once; the client sees a reset or EOF.
                        let _ = self.poll.registry().deregister(&mut stream);
                        continue;
                    }
                }
            };
            trace!(%peer, %transport, proxied, "connection accepted");
            self.connections.insert(connection);
            self.schedule_connection(key, now.instant);
            self.stats.tcp_accepted += 1;
        }
        self.pending.push(source);
    }

    /// Admits a connection from `tuple.client`: over TLS under the
    /// handshake cap and with a session of its own, then under the
    /// connection limits. Refusals are counted.
    pub(super) fn admit(&mut self, tuple: &FiveTuple) -> Result<Option<Box<ServerConnection>>, Refused> {
        let client = tuple.client;
        let tls = match (&mut self.tls, tuple.transport) {
            (Some(tls), Transport::Tls) => {
                if self.handshaking >= tls.max_handshakes {
                    // Closing at once keeps a handshake flood from
                    // holding memory and CPU; clients retry.
                    self.stats.tls_refused += 1;
                    debug!(%client, "tls connection refused: too many handshakes in progress");
                    return Err(Refused);
                }
                match tls.acceptor.accept() {
                    Ok(connection) => Some(Box::new(connection)),
                    Err(e) => {
                        warn!(error = %e, "cannot start a tls connection");
                        return Err(Refused);
                    }
                }
            }
            _ => None,
        };
        if !self.server.handle_connection_opened(tuple) {
            self.stats.tcp_refused += 1;
            debug!(%client, transport = %tuple.transport, "connection refused: connection limit");
            return Err(Refused);
        }
        if tls.is_some() {
            self.handshaking += 1;
            self.stats.tls_accepted += 1;
        }
        Ok(tls)
    }

    pub(super) fn serve_connection(&mut self, key: usize, now: Now) {
        let admitted = self.connections.get(key).is_some_and(|connection| connection.admitted);
        if !admitted && !self.read_proxy_header(key, now) {
            return;
        }
        let Some(connection) = self.connections.get_mut(key) else { return };
        let server = &mut self.server;
        let handle = ClientHandle(HANDLE_TCP | key as u64);
        let udp_out = &mut self.out;
        let mut unframed = None;
        let read = if connection.peer_closed {
            Ok(ReadStatus::Drained)
        } else {
            connection.read_frames(now.instant, |tuple, frame, replies| {
                match server.handle_client(now, tuple, handle, frame, replies) {
                    ClientOutcome::Forward { relay, peer, payload } => {
                        udp_out.push(Via::Relay(relay), peer, None, &frame[payload]);
                    }
                    ClientOutcome::ConnectionBound { id } => {
                        unframed = Some(splice::Unframed::Bound(id));
                        return Next::Unframed;
                    }
                    ClientOutcome::HandOff { worker } => {
                        unframed = Some(splice::Unframed::HandOff { owner: worker, frame: frame.to_vec() });
                        return Next::Unframed;
                    }
                    // RepliedFrom is for UDP only: over a stream the core answers on it.
                    ClientOutcome::Dropped
                    | ClientOutcome::Deferred
                    | ClientOutcome::Replied
                    | ClientOutcome::RepliedFrom { .. } => {}
                }
                Next::Frame
            })
        };
        if let Some(unframed) = unframed {
            // RFC 6062 data connection: no longer a STUN connection.
            self.unframe_connection(key, unframed, now);
            return;
        }
        // A client that shuts down its sending side after its requests still
        // reads: answers to what it sent are written before the connection
        // is closed.
        let read = match read {
            Err(Closed::Eof) => {
                connection.peer_closed = true;
                Ok(ReadStatus::Drained)
            }
            other => other,
        };
        let result = read.and_then(|status| connection.flush().map(|()| status));
        let finished = connection.peer_closed && connection.drained();
        if connection.stream.is_tls() && !connection.handshake_done && !connection.handshaking() && result.is_ok() {
            connection.handshake_done = true;
            self.handshaking -= 1;
            self.stats.tls_handshakes += 1;
            if let Some(tls) = connection.stream.tls() {
                debug!(
                    client = %connection.tuple.client,
                    alpn = tls.alpn_protocol().map(String::from_utf8_lossy).as_deref(),
                    sni = tls.server_name(),
                    version = ?tls.protocol_version(),
                    "tls handshake complete"
                );
            }
        }
        match result {
            Ok(_) if finished => self.close_connection(key, &Closed::Eof),
            Ok(ReadStatus::Drained | ReadStatus::Unframed) => {}
            Ok(ReadStatus::MoreAvailable) => self.pending.push(Source::Connection(key)),
            Err(reason) => self.close_connection(key, &reason),
        }
    }

    pub(super) fn flush_connection(&mut self, key: usize) {
        let Some(connection) = self.connections.get_mut(key) else { return };
        match connection.flush() {
            Err(reason) => self.close_connection(key, &reason),
            Ok(()) if connection.peer_closed && connection.drained() => self.close_connection(key, &Closed::Eof),
            Ok(()) => {}
        }
    }

    pub(super) fn close_connection(&mut self, key: usize, reason: &Closed) {
        let mut connection = self.connections.remove(key);
        if connection.stream.is_tls() && !connection.handshake_done {
            self.handshaking -= 1;
            if matches!(reason, Closed::HandshakeTimeout) {
                self.stats.tls_handshake_timeouts += 1;
            } else {
                self.stats.tls_handshake_failures += 1;
            }
            debug!(client = %connection.tuple.client, %reason, "tls handshake failed");
        }
        if matches!(reason, Closed::Eof | Closed::Idle | Closed::HandshakeTimeout) {
            connection.close_notify();
        }
        let _ = self.poll.registry().deregister(&mut connection.stream);
        if connection.admitted {
            self.server.handle_connection_closed(&connection.tuple);
        }
        self.stats.tcp_closed += 1;
        trace!(client = %connection.tuple.client, transport = %connection.tuple.transport, %reason, "connection closed");
    }

    /// Schedules the next check of connection `key`'s PROXY header, TLS
    /// handshake and idle deadlines, from `now`.
    pub(super) fn schedule_connection(&mut self, key: usize, now: Instant) {
        let handshake_timeout = self.tls.as_ref().map(|tls| tls.handshake_timeout);
        let header_timeout = self.proxy.as_ref().map(|proxy| proxy.header_timeout());
        let Some(connection) = self.connections.get_mut(key) else { return };
        // A connection silent that long has an allocation (or it would have
        // been closed): it is checked again a whole timeout later.
        let idle =
            Some(connection.last_received + TCP_IDLE_TIMEOUT).filter(|at| *at > now).unwrap_or(now + TCP_IDLE_TIMEOUT);
        let handshake = match handshake_timeout {
            Some(timeout) if connection.stream.is_tls() && !connection.handshake_done => {
                Some(connection.accepted + timeout)
            }
            _ => None,
        };
        let header = header_timeout.filter(|_| !connection.admitted).map(|timeout| connection.accepted + timeout);
        let at = [handshake, header].into_iter().flatten().fold(idle, Instant::min).max(now);
        connection.timer = Some(at);
        self.connection_timers.push(Reverse((at, key)));
    }

    /// Closes connections whose PROXY header or handshake took too long,
    /// and connections without an allocation that have been silent for
    /// [`TCP_IDLE_TIMEOUT`]; checks the others again later.
    pub(super) fn expire_connections(&mut self, now: Now) {
        while let Some(&Reverse((at, key))) = self.connection_timers.peek() {
            if at > now.instant {
                return;
            }
            self.connection_timers.pop();
            let Some(connection) = self.connections.get(key).filter(|c| c.timer == Some(at)) else { continue };
            let slow_header = !connection.admitted
                && self.proxy.as_ref().is_some_and(|proxy| {
                    now.instant.saturating_duration_since(connection.accepted) >= proxy.header_timeout()
                });
            let slow_handshake = self.tls.as_ref().is_some_and(|tls| {
                connection.stream.is_tls()
                    && !connection.handshake_done
                    && now.instant.saturating_duration_since(connection.accepted) >= tls.handshake_timeout
            });
            let idle = now.instant.saturating_duration_since(connection.last_received) >= TCP_IDLE_TIMEOUT
                && self.server.table().find(&connection.tuple).is_none();
            if slow_header {
                self.stats.proxy_timeouts += 1;
                debug!(peer = %connection.tuple.client, "no whole PROXY header in time");
                self.close_connection(key, &Closed::ProxyHeaderTimeout);
            } else if slow_handshake {
                self.close_connection(key, &Closed::HandshakeTimeout);
            } else if idle {
                self.close_connection(key, &Closed::Idle);
            } else {
                self.schedule_connection(key, now.instant);
            }
        }
    }
}
