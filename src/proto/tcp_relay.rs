//! RFC 6062 state of one worker: the peer data connections of its TCP
//! allocations, named by CONNECTION-ID, from Connect or an inbound peer to
//! ConnectionBind and on until either side closes.
//!
//! It owns the decisions that need no socket: which ids exist and whose
//! they are (unique in the whole server: an id names its worker, see
//! [`owner`]), 446 for a second connection to one peer, the per-allocation
//! limit, the 30-second deadlines of RFC 6062 §5.2 and §5.3, and the
//! messages the client gets later than the request that caused them
//! (a Connect's answer, ConnectionAttempt indications). Sockets, and the
//! bytes relayed once a connection is bound, belong to `crate::io`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::proto::FiveTuple;
use crate::proto::allocation::{AllocationId, ClientHandle};
use crate::proto::auth::SigningKey;
use crate::proto::stun::TransactionId;

/// How long a Connect waits for the peer to answer (RFC 6062 §5.2: at
/// least 30 seconds), after which the client gets 447.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an established peer connection waits for its ConnectionBind
/// before it is closed (RFC 6062 §5.2, §5.3).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// A CONNECTION-ID (RFC 6062 §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

/// The worker (of `workers`) whose table holds `id`: ids are drawn so that
/// this is the worker that made them, which lets a ConnectionBind arriving
/// on any worker find its allocation without a shared table.
pub fn owner(id: ConnectionId, workers: usize) -> usize {
    id.0 as usize % workers.max(1)
}

/// What a Connect's answer needs once the peer has answered: the request's
/// transaction, the key that signs the response, and whether the request
/// had a FINGERPRINT (RFC 8489 §7.3.1.1).
#[derive(Clone, Copy)]
pub struct PendingConnect {
    pub tid: TransactionId,
    pub key: Option<SigningKey>,
    pub fingerprint: bool,
}

/// Where a peer data connection is in its life.
#[derive(Clone, Copy)]
pub enum State {
    /// Connect opened it; the peer has not answered yet.
    Connecting(PendingConnect),
    /// Established, waiting for the client's ConnectionBind.
    Unbound,
    /// Joined to a client data connection; bytes flow.
    Bound,
}

#[derive(Clone, Copy)]
pub struct PeerConnection {
    pub allocation: AllocationId,
    pub peer: SocketAddr,
    pub state: State,
    /// When a connecting or unbound connection gives up; unused once bound.
    pub deadline: Instant,
}

impl PeerConnection {
    /// Whether a ConnectionBind may claim it now.
    pub fn is_bindable(&self, now: Instant) -> bool {
        matches!(self.state, State::Unbound) && now < self.deadline
    }
}

/// Why no new peer connection can be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The allocation already has a connection to this peer (446).
    Exists,
    /// The allocation has `max_tcp_peer_connections` already.
    Capacity,
}

/// A message for a client produced outside of a request's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlMessage {
    pub client: ClientHandle,
    pub tuple: FiveTuple,
    pub bytes: Vec<u8>,
}

/// The peer data connections of one worker's allocations.
pub struct TcpRelayTable {
    connections: HashMap<ConnectionId, PeerConnection>,
    by_allocation: HashMap<AllocationId, Vec<ConnectionId>>,
    worker: u32,
    workers: u32,
    /// Messages for clients, drained by the driver.
    pub(crate) outbox: VecDeque<ControlMessage>,
}

impl Default for TcpRelayTable {
    fn default() -> Self {
        Self::new(0, 1)
    }
}

impl TcpRelayTable {
    /// The table of worker `worker` of `workers`.
    pub fn new(worker: usize, workers: usize) -> Self {
        let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        let worker = u32::try_from(worker).unwrap_or(0) % workers;
        Self { connections: HashMap::new(), by_allocation: HashMap::new(), worker, workers, outbox: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    pub fn get(&self, id: ConnectionId) -> Option<&PeerConnection> {
        self.connections.get(&id)
    }

    /// Connections of an allocation, in every state.
    pub fn count(&self, allocation: AllocationId) -> usize {
        self.by_allocation.get(&allocation).map_or(0, Vec::len)
    }

    /// Records a Connect to `peer` (RFC 6062 §5.2): refused with
    /// [`ConnectError::Exists`] while the allocation has a connection to
    /// the same peer in any state, and over `max` connections.
    pub fn start_connect(
        &mut self,
        allocation: AllocationId,
        peer: SocketAddr,
        pending: PendingConnect,
        now: Instant,
        max: usize,
    ) -> Result<ConnectionId, ConnectError> {
        let existing = self.by_allocation.get(&allocation).map_or(&[][..], Vec::as_slice);
        if existing.iter().any(|id| self.connections.get(id).is_some_and(|c| c.peer == peer)) {
            return Err(ConnectError::Exists);
        }
        self.insert(allocation, peer, State::Connecting(pending), now + CONNECT_TIMEOUT, max)
    }

    /// Records a peer's inbound connection to the relayed address (RFC 6062
    /// §5.3), which then waits for its ConnectionBind. The caller has
    /// checked the permission.
    pub fn accept(
        &mut self,
        allocation: AllocationId,
        peer: SocketAddr,
        now: Instant,
        max: usize,
    ) -> Result<ConnectionId, ConnectError> {
        self.insert(allocation, peer, State::Unbound, now + BIND_TIMEOUT, max)
    }

    /// The peer answered a Connect: the connection waits for its
    /// ConnectionBind from now on. Returns what the answer needs.
    pub fn connected(&mut self, id: ConnectionId, now: Instant) -> Option<(AllocationId, PendingConnect)> {
        let connection = self.connections.get_mut(&id)?;
        let State::Connecting(pending) = connection.state else { return None };
        connection.state = State::Unbound;
        connection.deadline = now + BIND_TIMEOUT;
        Some((connection.allocation, pending))
    }

    /// Binds an unbound connection (RFC 6062 §5.4). `None` for an id that
    /// is unknown, still connecting, already bound or past its deadline:
    /// all of them 400.
    pub fn bind(&mut self, id: ConnectionId, now: Instant) -> Option<&PeerConnection> {
        let connection = self.connections.get_mut(&id)?;
        if !connection.is_bindable(now) {
            return None;
        }
        connection.state = State::Bound;
        Some(connection)
    }

    pub fn remove(&mut self, id: ConnectionId) -> Option<PeerConnection> {
        let connection = self.connections.remove(&id)?;
        if let Some(ids) = self.by_allocation.get_mut(&connection.allocation) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_allocation.remove(&connection.allocation);
            }
        }
        Some(connection)
    }

    /// Forgets every connection of a deleted allocation and returns them.
    pub fn remove_allocation(&mut self, allocation: AllocationId) -> Vec<(ConnectionId, PeerConnection)> {
        let ids = self.by_allocation.remove(&allocation).unwrap_or_default();
        ids.into_iter().filter_map(|id| self.connections.remove(&id).map(|c| (id, c))).collect()
    }

    /// Forgets the connections whose Connect or ConnectionBind did not come
    /// in time and returns them; bound connections never expire here.
    pub fn expire(&mut self, now: Instant) -> Vec<(ConnectionId, PeerConnection)> {
        let expired: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, c)| !matches!(c.state, State::Bound) && now >= c.deadline)
            .map(|(id, _)| *id)
            .collect();
        expired.into_iter().filter_map(|id| self.remove(id).map(|c| (id, c))).collect()
    }

    fn insert(
        &mut self,
        allocation: AllocationId,
        peer: SocketAddr,
        state: State,
        deadline: Instant,
        max: usize,
    ) -> Result<ConnectionId, ConnectError> {
        if self.count(allocation) >= max {
            return Err(ConnectError::Capacity);
        }
        let id = self.fresh_id();
        self.connections.insert(id, PeerConnection { allocation, peer, state, deadline });
        self.by_allocation.entry(allocation).or_default().push(id);
        Ok(id)
    }

    /// A random id of this worker's residue class that is not in use.
    /// Random, so ids say nothing about how many connections there were;
    /// the table is far smaller than the id space, so a few draws do.
    fn fresh_id(&self) -> ConnectionId {
        loop {
            let draw: u32 = rand::random();
            let base = draw - draw % self.workers;
            let Some(id) = base.checked_add(self.worker).map(ConnectionId) else { continue };
            if !self.connections.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> PendingConnect {
        PendingConnect { tid: TransactionId([1; 12]), key: None, fingerprint: false }
    }

    fn peer(text: &str) -> SocketAddr {
        text.parse().expect("literal")
    }

    #[test]
    fn ids_belong_to_their_worker_and_are_unique() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(2, 3);
        let mut seen = std::collections::HashSet::new();
        for port in 0..200u16 {
            let id = table.accept(AllocationId(usize::from(port)), peer("203.0.113.1:1"), now, 1).expect("room");
            assert_eq!(owner(id, 3), 2);
            assert!(seen.insert(id), "{id:?} given twice");
        }
        assert_eq!(table.len(), 200);
    }

    #[test]
    fn a_second_connect_to_the_same_peer_is_446_in_every_state() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let a = AllocationId(0);
        let id = table.start_connect(a, peer("203.0.113.1:80"), pending(), now, 8).expect("first");
        assert_eq!(table.start_connect(a, peer("203.0.113.1:80"), pending(), now, 8), Err(ConnectError::Exists));
        table.connected(id, now).expect("connecting");
        assert_eq!(table.start_connect(a, peer("203.0.113.1:80"), pending(), now, 8), Err(ConnectError::Exists));
        table.bind(id, now).expect("unbound");
        assert_eq!(table.start_connect(a, peer("203.0.113.1:80"), pending(), now, 8), Err(ConnectError::Exists));
        // Another port of the same host, and another allocation, are other connections.
        table.start_connect(a, peer("203.0.113.1:81"), pending(), now, 8).expect("other port");
        table.start_connect(AllocationId(1), peer("203.0.113.1:80"), pending(), now, 8).expect("other allocation");
        // Once closed, the peer may be connected again.
        table.remove(id).expect("present");
        table.start_connect(a, peer("203.0.113.1:80"), pending(), now, 8).expect("after close");
    }

    #[test]
    fn the_limit_counts_every_state() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let a = AllocationId(3);
        table.start_connect(a, peer("203.0.113.1:1"), pending(), now, 2).expect("one");
        table.accept(a, peer("203.0.113.1:2"), now, 2).expect("two");
        assert_eq!(table.accept(a, peer("203.0.113.1:3"), now, 2), Err(ConnectError::Capacity));
        assert_eq!(table.start_connect(a, peer("203.0.113.1:3"), pending(), now, 2), Err(ConnectError::Capacity));
        assert_eq!(table.count(a), 2);
        assert_eq!(table.remove_allocation(a).len(), 2);
        assert!(table.is_empty());
        assert_eq!(table.count(a), 0);
    }

    #[test]
    fn connect_times_out_after_30_seconds_and_bind_30_seconds_after_connecting() {
        let start = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let a = AllocationId(0);
        let slow = table.start_connect(a, peer("203.0.113.1:1"), pending(), start, 8).expect("slow");
        let fast = table.start_connect(a, peer("203.0.113.1:2"), pending(), start, 8).expect("fast");
        let connected_at = start + Duration::from_secs(10);
        table.connected(fast, connected_at).expect("connecting");
        assert!(table.expire(start + Duration::from_secs(29)).is_empty());
        let expired = table.expire(start + CONNECT_TIMEOUT);
        assert_eq!(expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![slow]);
        assert!(matches!(expired[0].1.state, State::Connecting(_)), "the client is owed a 447");
        // The established one has 30 s from when it connected.
        assert!(table.expire(connected_at + BIND_TIMEOUT - Duration::from_millis(1)).is_empty());
        assert_eq!(table.expire(connected_at + BIND_TIMEOUT).len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn bind_needs_an_unbound_connection_within_its_deadline() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let a = AllocationId(0);
        let connecting = table.start_connect(a, peer("203.0.113.1:1"), pending(), now, 8).expect("one");
        assert!(table.bind(connecting, now).is_none(), "still connecting");
        assert!(table.bind(ConnectionId(12345), now).is_none(), "unknown");
        let inbound = table.accept(a, peer("203.0.113.1:2"), now, 8).expect("two");
        assert!(table.bind(inbound, now + BIND_TIMEOUT).is_none(), "expired, even before the sweep");
        let inbound = table.accept(a, peer("203.0.113.1:3"), now, 8).expect("three");
        assert_eq!(table.bind(inbound, now).map(|c| c.peer), Some(peer("203.0.113.1:3")));
        assert!(table.bind(inbound, now).is_none(), "bound once only");
        // Bound connections stay however long they live.
        assert!(table.expire(now + Duration::from_secs(3600)).iter().all(|(id, _)| *id != inbound));
        assert!(table.get(inbound).is_some());
    }
}
