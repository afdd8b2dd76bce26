//! The server's RFC 6062 part: the checks of a TCP Allocate (§5.1), Connect
//! (§5.2), peers connecting to a relayed address (§5.3), ConnectionBind
//! (§5.4), and connections that were never bound (§5.2, §5.3).
//!
//! A Connect is answered when the driver reports the peer's answer, so its
//! response, like a ConnectionAttempt indication, leaves through
//! [`Server::poll_transmit`] rather than the request's reply buffer. A
//! ConnectionBind for another worker's connection is handed to that worker
//! unanswered.

use std::net::SocketAddr;

use tracing::{debug, trace};

use super::data::next_indication_tid;
use super::error::RequestError;
use super::respond::{self, Reply};
use super::timers::Timer;
use super::{ClientOutcome, Event, Identity, Path, Server, Transmit};
use crate::proto::allocation::{AllocationId, RelayId};
use crate::proto::policy;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, Message, MessageType, MessageWriter, Method, TransactionId};
use crate::proto::tcp_relay::{self as table, ConnectionId, PeerConnection, State};
use crate::proto::{FiveTuple, Now};

/// RFC 6062 §5.1: TCP relaying needs a stream between client and server,
/// and has no use for the attributes of UDP port and fragmentation control.
/// A dual allocation is refused too: RFC 6062 predates it.
pub(super) fn check_tcp_allocate(tuple: &FiveTuple, request: &Message<'_>) -> Result<(), RequestError> {
    if !tuple.transport.is_stream() {
        return Err(RequestError::BadRequest("TCP relaying needs a TCP connection to the server"));
    }
    let refused = [
        (AttrType::DONT_FRAGMENT, "DONT-FRAGMENT with TCP relaying"),
        (AttrType::EVEN_PORT, "EVEN-PORT with TCP relaying"),
        (AttrType::RESERVATION_TOKEN, "RESERVATION-TOKEN with TCP relaying"),
        (AttrType::ADDITIONAL_ADDRESS_FAMILY, "ADDITIONAL-ADDRESS-FAMILY with TCP relaying"),
    ];
    match refused.iter().find(|(typ, _)| request.attribute(*typ).is_some()) {
        Some((_, why)) => Err(RequestError::BadRequest(why)),
        None => Ok(()),
    }
}

impl Server {
    /// The driver's report on the TCP connection an [`Event::ConnectPeer`]
    /// started: it was established, or it failed (the driver has closed it
    /// then). The client's answer follows from [`Self::poll_transmit`].
    pub fn handle_peer_connected(&mut self, now: Now, id: ConnectionId, established: bool) {
        let Some(connection) = self.tcp.get(id) else { return };
        if !matches!(connection.state, State::Connecting) {
            return;
        }
        let (allocation_id, peer) = (connection.allocation, connection.peer);
        let answer = if established {
            if let Some(deadline) = self.tcp.connected(id, now.instant) {
                self.timers.schedule(deadline, Timer::Connection(id));
            }
            self.stats.tcp_peer_connections += 1;
            Ok(id)
        } else {
            self.tcp.remove(id);
            self.stats.tcp_peer_failures += 1;
            Err(RequestError::ConnectionFailed)
        };
        if let Some(allocation) = self.table.get(allocation_id) {
            debug!(parent: &allocation.span, %peer, connection = id.0, established, "Connect answered");
        }
        self.answer_connect(now, id, allocation_id, answer);
    }

    /// A peer connected to the relayed address of `relay` (RFC 6062 §5.3).
    /// With a permission for its IP, the connection gets an id and the
    /// client a ConnectionAttempt indication; without one (or over the
    /// allocation's limit) `None`, and the driver closes it.
    pub fn handle_peer_accepted(&mut self, now: Now, relay: RelayId, peer: SocketAddr) -> Option<ConnectionId> {
        let peer = SocketAddr::new(policy::canonical(peer.ip()), peer.port());
        let max = self.config.turn.as_ref().map_or(0, |t| t.max_tcp_peer_connections);
        let allocation_id = relay.allocation();
        let welcome = self
            .table
            .get(allocation_id)
            .is_some_and(|a| a.tcp_relay && !a.is_expired(now.instant) && a.has_permission(peer.ip(), now.instant));
        let accepted =
            if welcome { self.tcp.accept(allocation_id, peer, now.instant, max, &mut self.rng).ok() } else { None };
        let (Some(id), Some(allocation)) = (accepted, self.table.get(allocation_id)) else {
            self.stats.tcp_peer_refused += 1;
            trace!(%peer, "inbound peer connection refused: no permission or over the limit");
            return None;
        };
        if let Some(connection) = self.tcp.get(id) {
            self.timers.schedule(connection.deadline, Timer::Connection(id));
        }
        let tid = next_indication_tid(&self.indication_prefix, &mut self.indication_counter);
        debug!(parent: &allocation.span, %peer, connection = id.0, "peer connected");
        self.outbox.push(Transmit { client: allocation.client, tuple: allocation.tuple }, |out| {
            let mut w = MessageWriter::new(
                out,
                MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication),
                TransactionId(tid),
            );
            w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer).attr_u32(AttrType::CONNECTION_ID, id.0);
        });
        self.stats.tcp_peer_connections += 1;
        Some(id)
    }

    /// Bytes a bound pair may move now towards the peer and towards the
    /// client: what is left of its allocation's `max_bps` budgets (shared
    /// by all its pairs), or no limit. The driver reads no more than that,
    /// so a pair over its budget is paced by TCP flow control, not dropped.
    pub fn tcp_relay_allowance(&mut self, now: Now, id: ConnectionId) -> [usize; 2] {
        let allocation = self.tcp.get(id).and_then(|c| self.table.get_mut(c.allocation));
        match allocation.and_then(|a| a.bandwidth.as_mut()) {
            Some(buckets) => [buckets[0].available(now.instant), buckets[1].available(now.instant)],
            None => [usize::MAX; 2],
        }
    }

    /// Bytes a bound pair moved, counted in its allocation's traffic (logged
    /// when the allocation ends), against its bandwidth budgets, and in the
    /// server's totals.
    pub fn record_tcp_relay_traffic(&mut self, id: ConnectionId, to_peer: u64, to_client: u64) {
        self.stats.tcp_relayed_bytes += to_peer + to_client;
        if let Some(allocation) = self.tcp.get(id).and_then(|c| self.table.get_mut(c.allocation)) {
            allocation.traffic.bytes_to_peer += to_peer;
            allocation.traffic.bytes_to_client += to_client;
            if let Some(buckets) = &mut allocation.bandwidth {
                buckets[0].spend(to_peer);
                buckets[1].spend(to_client);
            }
        }
    }

    /// A peer data connection ended (either side closed, or failed, or its
    /// client side could not be attached); the driver has closed both
    /// sides. A bound client data connection no longer counts against the
    /// connection limits.
    pub fn handle_tcp_relay_closed(&mut self, id: ConnectionId) {
        let Some(connection) = self.tcp.remove(id) else { return };
        self.release_client_side(&connection);
        if let Some(allocation) = self.table.get(connection.allocation) {
            debug!(parent: &allocation.span, peer = %connection.peer, connection = id.0, "peer connection closed");
        }
    }

    /// RFC 6062 §5.2. On success nothing is sent yet: the answer follows
    /// when the driver reports the peer's answer, or after
    /// [`crate::proto::tcp_relay::CONNECT_TIMEOUT`].
    pub(super) fn connect(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
    ) -> Result<ClientOutcome, RequestError> {
        let id = self.live_allocation(now, tuple, identity)?;
        if !self.table.get(id).is_some_and(|a| a.tcp_relay) {
            return Err(RequestError::BadRequest("Connect on a UDP allocation"));
        }
        let peer = request
            .attribute(AttrType::XOR_PEER_ADDRESS)
            .ok_or(RequestError::BadRequest("XOR-PEER-ADDRESS missing"))?;
        let peer = self.checked_peer(id, peer, request, Path::Request)?;
        let max = self.config.turn.as_ref().map_or(0, |t| t.max_tcp_peer_connections);
        let connection = self.tcp.start_connect(id, peer, now.instant, max, &mut self.rng)?;
        if let Some(started) = self.tcp.get(connection) {
            self.timers.schedule(started.deadline, Timer::Connection(connection));
        }
        self.connecting.insert(connection, Reply::to(request, identity.key));
        self.events.push_back(Event::ConnectPeer { relay: RelayId::new(id, peer.is_ipv6()), connection, peer });
        if let Some(allocation) = self.table.get(id) {
            debug!(parent: &allocation.span, %peer, connection = connection.0, "connecting to peer");
        }
        Ok(ClientOutcome::Deferred)
    }

    /// RFC 6062 §5.4: on a new connection, by the allocation's user, for a
    /// connection waiting for its bind. A CONNECTION-ID of another worker
    /// (the kernel spreads connections over workers by their 5-tuple) sends
    /// the connection there, where its allocation is.
    /// The worker to hand a ConnectionBind to, when its CONNECTION-ID is
    /// another worker's (decided before authentication: that worker knows
    /// the allocation's user). Anything malformed stays here, to be refused.
    pub(super) fn connection_bind_owner(&self, tuple: &FiveTuple, request: &Message<'_>) -> Option<usize> {
        if request.method() != Method::CONNECTION_BIND || !tuple.transport.is_stream() {
            return None;
        }
        let id = ConnectionId(attr::read_u32(request.attribute(AttrType::CONNECTION_ID)?).ok()?);
        let (worker, workers) = self.tcp.worker();
        let owner = table::owner(id, workers);
        (owner != worker).then_some(owner)
    }

    pub(super) fn connection_bind(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<ClientOutcome, RequestError> {
        // Over TLS too: the IO layer carries the data connection's TLS
        // session on into the unframed relay.
        if !tuple.transport.is_stream() {
            return Err(RequestError::BadRequest("ConnectionBind needs a TCP or TLS connection"));
        }
        if self.table.find(tuple).is_some() {
            return Err(RequestError::BadRequest("ConnectionBind on a control connection"));
        }
        let value =
            request.attribute(AttrType::CONNECTION_ID).ok_or(RequestError::BadRequest("CONNECTION-ID missing"))?;
        let id = ConnectionId(attr::read_u32(value).map_err(|_| RequestError::BadRequest("CONNECTION-ID malformed"))?);
        let allocation_id = self
            .tcp
            .get(id)
            .filter(|c| c.is_bindable(now.instant))
            .map(|c| c.allocation)
            .ok_or(RequestError::BadRequest("CONNECTION-ID unknown, expired or bound"))?;
        self.check_owner(now, allocation_id, identity)?;
        let connection =
            self.tcp.bind(id, *tuple, now.instant).ok_or(RequestError::BadRequest("CONNECTION-ID not bindable"))?;
        let peer = connection.peer;
        if let Some(allocation) = self.table.get(allocation_id) {
            debug!(parent: &allocation.span, %peer, connection = id.0, client = %tuple.client, "connection bound");
        }
        respond::success(&self.config, reply, &Reply::to(request, identity.key), |_| {});
        Ok(ClientOutcome::ConnectionBound { id })
    }

    /// A connection's timer came due: closed if its Connect or
    /// ConnectionBind did not come in time; an unanswered Connect gets 447.
    pub(super) fn expire_tcp_connection(&mut self, now: Now, id: ConnectionId) {
        let Some(connection) = self.tcp.expire(id, now.instant) else { return };
        self.events.push_back(Event::ClosePeer { connection: id });
        self.stats.tcp_peer_failures += 1;
        if let Some(allocation) = self.table.get(connection.allocation) {
            debug!(parent: &allocation.span, peer = %connection.peer, connection = id.0, "peer connection expired");
        }
        if matches!(connection.state, State::Connecting) {
            self.answer_connect(now, id, connection.allocation, Err(RequestError::ConnectionFailed));
        }
    }

    /// A deleted allocation's connections close with it (RFC 6062 §5.5),
    /// and what was queued for its client is not sent: the driver may
    /// already have given its handle to another client.
    pub(super) fn close_tcp_connections(&mut self, id: AllocationId, tuple: &FiveTuple) {
        for (connection, peer_connection) in self.tcp.remove_allocation(id) {
            self.connecting.remove(&connection);
            self.release_client_side(&peer_connection);
            self.events.push_back(Event::ClosePeer { connection });
        }
        self.outbox.forget(tuple);
    }

    /// A bound pair's client data connection ends with the pair.
    fn release_client_side(&mut self, connection: &PeerConnection) {
        if let State::Bound(client) = connection.state {
            self.resources.release_connection(client.client.ip());
        }
    }

    /// Writes a Connect's response, signed and fingerprinted as its request
    /// was, for the client of `allocation`.
    fn answer_connect(
        &mut self,
        now: Now,
        id: ConnectionId,
        allocation: AllocationId,
        answer: Result<ConnectionId, RequestError>,
    ) {
        let Some(reply) = self.connecting.remove(&id) else { return };
        let Some(allocation) = self.table.get(allocation) else { return };
        let transmit = Transmit { client: allocation.client, tuple: allocation.tuple };
        let (config, stats) = (&self.config, &mut self.stats);
        self.outbox.push(transmit, |out| match answer {
            Ok(id) => respond::success(config, out, &reply, |w| {
                w.attr_u32(AttrType::CONNECTION_ID, id.0);
            }),
            Err(error) => respond::refusal(config, stats, now, &transmit.tuple, out, &reply, &error),
        });
    }
}
