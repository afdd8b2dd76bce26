//! The server's RFC 6062 part: the checks of a TCP Allocate (§5.1), Connect
//! (§5.2), peers connecting to a relayed address (§5.3), ConnectionBind
//! (§5.4), and connections that were never bound (§5.2, §5.3).
//!
//! A Connect is answered when the driver reports the peer's answer, so its
//! response, like a ConnectionAttempt indication, leaves through
//! [`Server::poll_control`] rather than the request's reply buffer.

use std::net::SocketAddr;

use tracing::{debug, trace};

use super::{ClientOutcome, Driver, Identity, Path, Server, next_indication_tid};
use crate::proto::allocation::{AllocationId, RelayId};
use crate::proto::error::RequestError;
use crate::proto::policy;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, ErrorCode, Message, MessageType, MessageWriter, Method, TransactionId};
use crate::proto::tcp_relay::{ConnectError, ConnectionId, ControlMessage, PendingConnect, State, TcpRelayTable};
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
    /// Tells the server which worker (of `workers`) it is, so the
    /// CONNECTION-IDs it hands out are unique in the whole process and name
    /// their worker ([`crate::proto::tcp_relay::owner`]). Call before the
    /// first input.
    pub fn set_worker(&mut self, worker: usize, workers: usize) {
        self.tcp = TcpRelayTable::new(worker, workers);
    }

    /// The peer data connections of this worker's allocations.
    pub fn tcp_connections(&self) -> &TcpRelayTable {
        &self.tcp
    }

    /// The next message for a client that no request of this moment
    /// answers: a Connect's response, a ConnectionAttempt indication.
    /// Should be polled after `handle_peer_connected`,
    /// `handle_peer_accepted` and `handle_timeout`.
    pub fn poll_control(&mut self) -> Option<ControlMessage> {
        self.tcp.outbox.pop_front()
    }

    /// The driver's report on the TCP connection a Connect started: it was
    /// established, or it failed (the driver has closed it then). The
    /// client's answer follows from [`Self::poll_control`].
    pub fn handle_peer_connected(&mut self, now: Now, id: ConnectionId, established: bool) {
        let Some(connection) = self.tcp.get(id) else { return };
        let State::Connecting(pending) = connection.state else { return };
        let (allocation_id, peer) = (connection.allocation, connection.peer);
        let answer = if established {
            self.tcp.connected(id, now.instant);
            self.stats.tcp_peer_connections += 1;
            Ok(id)
        } else {
            self.tcp.remove(id);
            self.stats.tcp_peer_failures += 1;
            Err(ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE)
        };
        if let Some(allocation) = self.table.get(allocation_id) {
            debug!(parent: &allocation.span, %peer, connection = id.0, established, "Connect answered");
        }
        self.queue_connect_answer(allocation_id, &pending, answer);
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
        let accepted = if welcome { self.tcp.accept(allocation_id, peer, now.instant, max).ok() } else { None };
        let (Some(id), Some(allocation)) = (accepted, self.table.get(allocation_id)) else {
            self.stats.tcp_peer_refused += 1;
            trace!(%peer, "inbound peer connection refused: no permission or over the limit");
            return None;
        };
        let tid = next_indication_tid(&self.indication_prefix, &mut self.indication_counter);
        let mut bytes = Vec::with_capacity(64);
        let mut w = MessageWriter::new(
            &mut bytes,
            MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication),
            TransactionId(tid),
        );
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer).attr_u32(AttrType::CONNECTION_ID, id.0);
        w.finish();
        debug!(parent: &allocation.span, %peer, connection = id.0, "peer connected");
        self.tcp.outbox.push_back(ControlMessage { client: allocation.client, tuple: allocation.tuple, bytes });
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

    /// A bound peer data connection ended (either side closed, or failed);
    /// the driver has closed both sides.
    pub fn handle_tcp_relay_closed(&mut self, id: ConnectionId) {
        if let Some(connection) = self.tcp.remove(id)
            && let Some(allocation) = self.table.get(connection.allocation)
        {
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
        driver: &mut dyn Driver,
    ) -> Result<ClientOutcome, RequestError> {
        let id = self.live_allocation(now, tuple, identity, driver)?;
        if !self.table.get(id).is_some_and(|a| a.tcp_relay) {
            return Err(RequestError::BadRequest("Connect on a UDP allocation"));
        }
        let peer = request
            .attribute(AttrType::XOR_PEER_ADDRESS)
            .ok_or(RequestError::BadRequest("XOR-PEER-ADDRESS missing"))?;
        let peer = self.checked_peer(id, peer, request, Path::Request)?;
        let max = self.config.turn.as_ref().map_or(0, |t| t.max_tcp_peer_connections);
        let pending =
            PendingConnect { tid: request.transaction_id(), key: identity.key, fingerprint: request.has_fingerprint() };
        let connection = self.tcp.start_connect(id, peer, pending, now.instant, max).map_err(|e| match e {
            ConnectError::Exists => RequestError::ConnectionExists,
            ConnectError::Capacity => RequestError::InsufficientCapacity("peer connection limit of the allocation"),
        })?;
        if driver.connect_peer(RelayId::new(id, peer.is_ipv6()), connection, peer).is_err() {
            self.tcp.remove(connection);
            self.stats.tcp_peer_failures += 1;
            return Err(RequestError::ConnectionFailed);
        }
        if let Some(allocation) = self.table.get(id) {
            debug!(parent: &allocation.span, %peer, connection = connection.0, "connecting to peer");
        }
        Ok(ClientOutcome::Dropped)
    }

    /// RFC 6062 §5.4: on a new connection, by the allocation's user, for a
    /// connection waiting for its bind.
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
            self.tcp.bind(id, now.instant).ok_or(RequestError::BadRequest("CONNECTION-ID not bindable"))?;
        let peer = connection.peer;
        if let Some(allocation) = self.table.get(allocation_id) {
            debug!(parent: &allocation.span, %peer, connection = id.0, client = %tuple.client, "connection bound");
        }
        self.success_response(request, identity.key.as_ref(), reply, |_| {});
        Ok(ClientOutcome::ConnectionBound { id })
    }

    /// Closes the connections whose Connect or ConnectionBind did not come
    /// in time; an unanswered Connect gets 447.
    pub(super) fn expire_tcp_connections(&mut self, now: Now, driver: &mut dyn Driver) {
        for (id, connection) in self.tcp.expire(now.instant) {
            driver.close_peer(id);
            self.stats.tcp_peer_failures += 1;
            if let Some(allocation) = self.table.get(connection.allocation) {
                debug!(parent: &allocation.span, peer = %connection.peer, connection = id.0, "peer connection expired");
            }
            if let State::Connecting(pending) = connection.state {
                self.queue_connect_answer(
                    connection.allocation,
                    &pending,
                    Err(ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE),
                );
            }
        }
    }

    /// A deleted allocation's connections close with it (RFC 6062 §5.5),
    /// and what was queued for its client is not sent: the driver may
    /// already have given its handle to another client.
    pub(super) fn close_tcp_connections(&mut self, id: AllocationId, tuple: &FiveTuple, driver: &mut dyn Driver) {
        for (connection, _) in self.tcp.remove_allocation(id) {
            driver.close_peer(connection);
        }
        self.tcp.outbox.retain(|message| message.tuple != *tuple);
    }

    /// Writes a Connect's response, signed and fingerprinted as its request
    /// was, for the client of `allocation`.
    fn queue_connect_answer(
        &mut self,
        allocation: AllocationId,
        pending: &PendingConnect,
        answer: Result<ConnectionId, ErrorCode>,
    ) {
        let Some(allocation) = self.table.get(allocation) else { return };
        let class = if answer.is_ok() { Class::Success } else { Class::Error };
        let mut bytes = Vec::with_capacity(96);
        let mut w = MessageWriter::new(&mut bytes, MessageType::new(Method::CONNECT, class), pending.tid);
        match answer {
            Ok(id) => {
                w.attr_u32(AttrType::CONNECTION_ID, id.0);
            }
            Err(code) => {
                w.error_code(code, self.config.reason_phrases.then(|| code.reason()));
                self.stats.error_responses += 1;
            }
        }
        if let Some(software) = &self.config.software {
            w.attr(AttrType::SOFTWARE, software.as_bytes());
        }
        if let Some(key) = &pending.key {
            key.sign(&mut w);
        }
        if pending.fingerprint {
            w.fingerprint();
        }
        w.finish();
        self.tcp.outbox.push_back(ControlMessage { client: allocation.client, tuple: allocation.tuple, bytes });
    }
}
