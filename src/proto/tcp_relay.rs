//! RFC 6062 state of one worker: the peer data connections of its TCP
//! allocations, named by CONNECTION-ID, from Connect or an inbound peer to
//! ConnectionBind and on until either side closes.
//!
//! It owns the decisions that need no socket: which ids exist and whose
//! they are (unique in the whole server: an id names its worker, see
//! [`owner`]), 446 for a second connection to one peer, the per-allocation
//! limit, and the 30-second deadlines of RFC 6062 §5.2 and §5.3. Sockets,
//! and the bytes relayed once a connection is bound, belong to `crate::io`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, RngExt};

use crate::proto::FiveTuple;
use crate::proto::allocation::AllocationId;

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

/// Where a peer data connection is in its life.
#[derive(Clone, Copy)]
pub enum State {
    /// Connect opened it; the peer has not answered yet.
    Connecting,
    /// Established, waiting for the client's ConnectionBind.
    Unbound,
    /// Joined to the client data connection of this 5-tuple; bytes flow.
    Bound(FiveTuple),
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

/// The peer data connections of one worker's allocations.
pub struct TcpRelayTable {
    connections: HashMap<ConnectionId, PeerConnection>,
    by_allocation: HashMap<AllocationId, Vec<ConnectionId>>,
    worker: u32,
    workers: u32,
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
        Self { connections: HashMap::new(), by_allocation: HashMap::new(), worker, workers }
    }

    /// Which worker this table is (of how many), as given to [`Self::new`].
    pub fn worker(&self) -> (usize, usize) {
        (self.worker as usize, self.workers as usize)
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
        now: Instant,
        max: usize,
        rng: &mut impl Rng,
    ) -> Result<ConnectionId, ConnectError> {
        let existing = self.by_allocation.get(&allocation).map_or(&[][..], Vec::as_slice);
        if existing.iter().any(|id| self.connections.get(id).is_some_and(|c| c.peer == peer)) {
            return Err(ConnectError::Exists);
        }
        self.insert(allocation, peer, State::Connecting, now + CONNECT_TIMEOUT, max, rng)
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
        rng: &mut impl Rng,
    ) -> Result<ConnectionId, ConnectError> {
        self.insert(allocation, peer, State::Unbound, now + BIND_TIMEOUT, max, rng)
    }

    /// The peer answered a Connect: the connection waits for its
    /// ConnectionBind from now on, until the returned deadline.
    pub fn connected(&mut self, id: ConnectionId, now: Instant) -> Option<Instant> {
        let connection = self.connections.get_mut(&id)?;
        if !matches!(connection.state, State::Connecting) {
            return None;
        }
        connection.state = State::Unbound;
        connection.deadline = now + BIND_TIMEOUT;
        Some(connection.deadline)
    }

    /// Binds an unbound connection to the client data connection `client`
    /// (RFC 6062 §5.4). `None` for an id that is unknown, still connecting,
    /// already bound or past its deadline: all of them 400.
    pub fn bind(&mut self, id: ConnectionId, client: FiveTuple, now: Instant) -> Option<&PeerConnection> {
        let connection = self.connections.get_mut(&id)?;
        if !connection.is_bindable(now) {
            return None;
        }
        connection.state = State::Bound(client);
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

    /// Forgets `id` if its Connect or ConnectionBind did not come in time,
    /// and returns it; bound connections never expire here.
    pub fn expire(&mut self, id: ConnectionId, now: Instant) -> Option<PeerConnection> {
        let connection = self.connections.get(&id)?;
        if matches!(connection.state, State::Bound(_)) || now < connection.deadline {
            return None;
        }
        self.remove(id)
    }

    fn insert(
        &mut self,
        allocation: AllocationId,
        peer: SocketAddr,
        state: State,
        deadline: Instant,
        max: usize,
        rng: &mut impl Rng,
    ) -> Result<ConnectionId, ConnectError> {
        if self.count(allocation) >= max {
            return Err(ConnectError::Capacity);
        }
        let id = self.fresh_id(rng);
        self.connections.insert(id, PeerConnection { allocation, peer, state, deadline });
        self.by_allocation.entry(allocation).or_default().push(id);
        Ok(id)
    }

    /// A random id of this worker's residue class that is not in use.
    /// Random, so ids say nothing about how many connections there were;
    /// the table is far smaller than the id space, so a few draws do.
    fn fresh_id(&self, rng: &mut impl Rng) -> ConnectionId {
        loop {
            let draw: u32 = rng.random();
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
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn rng() -> StdRng {
        StdRng::from_seed([3; 32])
    }

    fn peer(text: &str) -> SocketAddr {
        text.parse().expect("literal")
    }

    fn client() -> FiveTuple {
        FiveTuple {
            client: peer("192.0.2.1:5000"),
            server: peer("192.0.2.10:3478"),
            transport: crate::proto::Transport::Tcp,
        }
    }

    /// What the server's timers expire at `now` among `ids`.
    fn expire_due(
        table: &mut TcpRelayTable,
        ids: &[ConnectionId],
        now: Instant,
    ) -> Vec<(ConnectionId, PeerConnection)> {
        ids.iter().filter_map(|id| table.expire(*id, now).map(|c| (*id, c))).collect()
    }

    #[test]
    fn ids_belong_to_their_worker_and_are_unique() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(2, 3);
        let mut rng = rng();
        let mut seen = std::collections::HashSet::new();
        for port in 0..200u16 {
            let id =
                table.accept(AllocationId(usize::from(port)), peer("203.0.113.1:1"), now, 1, &mut rng).expect("room");
            assert_eq!(owner(id, 3), 2);
            assert!(seen.insert(id), "{id:?} given twice");
        }
        assert_eq!(table.len(), 200);
    }

    #[test]
    fn a_second_connect_to_the_same_peer_is_446_in_every_state() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let rng = &mut rng();
        let a = AllocationId(0);
        let id = table.start_connect(a, peer("203.0.113.1:80"), now, 8, rng).expect("first");
        assert_eq!(table.start_connect(a, peer("203.0.113.1:80"), now, 8, rng), Err(ConnectError::Exists));
        table.connected(id, now).expect("connecting");
        assert_eq!(table.start_connect(a, peer("203.0.113.1:80"), now, 8, rng), Err(ConnectError::Exists));
        table.bind(id, client(), now).expect("unbound");
        assert_eq!(table.start_connect(a, peer("203.0.113.1:80"), now, 8, rng), Err(ConnectError::Exists));
        // Another port of the same host, and another allocation, are other connections.
        table.start_connect(a, peer("203.0.113.1:81"), now, 8, rng).expect("other port");
        table.start_connect(AllocationId(1), peer("203.0.113.1:80"), now, 8, rng).expect("other allocation");
        // Once closed, the peer may be connected again.
        table.remove(id).expect("present");
        table.start_connect(a, peer("203.0.113.1:80"), now, 8, rng).expect("after close");
    }

    #[test]
    fn the_limit_counts_every_state() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let rng = &mut rng();
        let a = AllocationId(3);
        table.start_connect(a, peer("203.0.113.1:1"), now, 2, rng).expect("one");
        table.accept(a, peer("203.0.113.1:2"), now, 2, rng).expect("two");
        assert_eq!(table.accept(a, peer("203.0.113.1:3"), now, 2, rng), Err(ConnectError::Capacity));
        assert_eq!(table.start_connect(a, peer("203.0.113.1:3"), now, 2, rng), Err(ConnectError::Capacity));
        assert_eq!(table.count(a), 2);
        assert_eq!(table.remove_allocation(a).len(), 2);
        assert!(table.is_empty());
        assert_eq!(table.count(a), 0);
    }

    #[test]
    fn connect_times_out_after_30_seconds_and_bind_30_seconds_after_connecting() {
        let start = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let rng = &mut rng();
        let a = AllocationId(0);
        let slow = table.start_connect(a, peer("203.0.113.1:1"), start, 8, rng).expect("slow");
        let fast = table.start_connect(a, peer("203.0.113.1:2"), start, 8, rng).expect("fast");
        let ids = [slow, fast];
        let connected_at = start + Duration::from_secs(10);
        table.connected(fast, connected_at).expect("connecting");
        assert!(expire_due(&mut table, &ids, start + Duration::from_secs(29)).is_empty());
        let expired = expire_due(&mut table, &ids, start + CONNECT_TIMEOUT);
        assert_eq!(expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![slow]);
        assert!(matches!(expired[0].1.state, State::Connecting), "the client is owed a 447");
        // The established one has 30 s from when it connected.
        assert!(expire_due(&mut table, &ids, connected_at + BIND_TIMEOUT - Duration::from_millis(1)).is_empty());
        assert_eq!(expire_due(&mut table, &ids, connected_at + BIND_TIMEOUT).len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn bind_needs_an_unbound_connection_within_its_deadline() {
        let now = crate::io::clock::now();
        let mut table = TcpRelayTable::new(0, 1);
        let rng = &mut rng();
        let a = AllocationId(0);
        let connecting = table.start_connect(a, peer("203.0.113.1:1"), now, 8, rng).expect("one");
        assert!(table.bind(connecting, client(), now).is_none(), "still connecting");
        assert!(table.bind(ConnectionId(12345), client(), now).is_none(), "unknown");
        let inbound = table.accept(a, peer("203.0.113.1:2"), now, 8, rng).expect("two");
        assert!(table.bind(inbound, client(), now + BIND_TIMEOUT).is_none(), "expired, even before the sweep");
        let inbound = table.accept(a, peer("203.0.113.1:3"), now, 8, rng).expect("three");
        assert_eq!(table.bind(inbound, client(), now).map(|c| c.peer), Some(peer("203.0.113.1:3")));
        assert!(table.bind(inbound, client(), now).is_none(), "bound once only");
        // Bound connections stay however long they live.
        assert!(
            expire_due(&mut table, &[connecting, inbound], now + Duration::from_secs(3600))
                .iter()
                .all(|(id, _)| *id != inbound)
        );
        assert!(table.get(inbound).is_some());
    }
}
