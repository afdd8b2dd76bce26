//! The driver side of the core without sockets, for unit tests, fuzz
//! targets and benches: [`Sockets`] answers the core's events as the IO
//! layer would (relay sockets open, peers connect) and keeps what a test
//! wants to check, and [`accounts`] gives the very accounts the IO layer
//! shares between workers. One fake, so the rules tests rely on are the
//! real ones.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;

use crate::io::shared::SharedAccounts;
use crate::proto::Now;
use crate::proto::allocation::RelayId;
use crate::proto::resources::QuotaLimits;
use crate::proto::server::RelayOpenError;
use crate::proto::server::{Event, RelayProtocol, Server, Transmit};
use crate::proto::tcp_relay::ConnectionId;

/// Accounts for a server under test: `ports` on every relay IP, `limits`,
/// and a fixed seed, so port order replays.
pub fn accounts(ports: (u16, u16), limits: QuotaLimits) -> SharedAccounts {
    SharedAccounts::new(ports, limits, [0x5E; 32])
}

/// A relay socket the core asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenCall {
    pub relay: RelayId,
    pub addr: SocketAddr,
    pub protocol: RelayProtocol,
    pub dont_fragment: bool,
}

/// Fake sockets: what the driver holds, what the core asked of it, and how
/// it answers.
#[derive(Default)]
pub struct Sockets {
    /// Relay sockets open now, UDP and TCP.
    pub open: BTreeMap<RelayId, SocketAddr>,
    /// Those of `open` that are RFC 6062 listeners.
    pub tcp_relays: BTreeSet<RelayId>,
    /// Every [`Event::OpenRelay`], answered or not.
    pub open_calls: Vec<OpenCall>,
    /// Every [`Event::CloseRelay`].
    pub close_calls: Vec<RelayId>,
    /// Every [`Event::ConnectPeer`] that started.
    pub connects: Vec<(RelayId, ConnectionId, SocketAddr)>,
    /// Peer connections held, in the order they were made: CONNECTION-IDs
    /// are random, so a fuzzer picks among them by position here.
    pub live: Vec<ConnectionId>,
    /// Those of `live` a Connect started and no report has settled yet.
    pub connecting: Vec<ConnectionId>,
    /// Every [`Event::ClosePeer`].
    pub closed_peers: Vec<ConnectionId>,
    /// Every [`Event::LookupUser`], as (realm, name): left for the test to
    /// answer, as a store would, later.
    pub lookups: Vec<(Box<str>, Box<str>)>,
    /// The events observers see, in order.
    pub observed: Vec<Event>,
    /// Refuse DONT-FRAGMENT, as on a platform without IP_DONTFRAG.
    pub dont_fragment_unsupported: bool,
    /// Ports another program holds: opening them fails with EADDRINUSE.
    pub in_use: HashSet<SocketAddr>,
    /// Which Connects fail at once, as a socket that cannot even start.
    pub refuse_connect: Option<fn(SocketAddr) -> bool>,
}

impl Sockets {
    /// Acts on every event the core has, answering those that need it,
    /// and returns the messages it wrote for later.
    pub fn drive(&mut self, server: &mut Server, now: Now) -> Vec<(Transmit, Vec<u8>)> {
        let mut transmits = Vec::new();
        loop {
            if let Some(event) = server.poll_event() {
                self.handle(server, now, event);
                continue;
            }
            let mut bytes = Vec::new();
            match server.poll_transmit(&mut bytes) {
                Some(transmit) => transmits.push((transmit, bytes)),
                None => return transmits,
            }
        }
    }

    /// Closes a peer connection as the driver does when a pair ends.
    pub fn release(&mut self, id: ConnectionId) {
        let at = self.live.iter().position(|held| *held == id);
        let at = at.unwrap_or_else(|| panic!("connection {id:?} closed, not held"));
        self.live.remove(at);
        self.connecting.retain(|connecting| *connecting != id);
    }

    /// Holds a peer connection the core accepted.
    pub fn hold(&mut self, id: ConnectionId) {
        assert!(!self.live.contains(&id), "connection {id:?} made while held");
        self.live.push(id);
    }

    fn handle(&mut self, server: &mut Server, now: Now, event: Event) {
        match event {
            Event::OpenRelay { relay, addr, protocol, dont_fragment } => {
                assert!(!self.open.contains_key(&relay), "relay {relay:?} opened while open");
                assert_eq!(relay.is_ipv6(), addr.is_ipv6(), "relay id and address of different families");
                self.open_calls.push(OpenCall { relay, addr, protocol, dont_fragment });
                let result = if dont_fragment && self.dont_fragment_unsupported {
                    Err(RelayOpenError::DontFragmentUnsupported)
                } else if self.in_use.contains(&addr) {
                    Err(RelayOpenError::AddrInUse)
                } else {
                    self.open.insert(relay, addr);
                    if protocol == RelayProtocol::Tcp {
                        self.tcp_relays.insert(relay);
                    }
                    Ok(())
                };
                server.handle_relay_opened(now, relay, result);
            }
            Event::CloseRelay { relay, addr } => {
                let open = self.open.remove(&relay);
                assert_eq!(open, Some(addr), "CloseRelay({relay:?}, {addr}) of a relay not open there");
                self.tcp_relays.remove(&relay);
                self.close_calls.push(relay);
            }
            Event::ConnectPeer { relay, connection, peer } => {
                assert!(self.tcp_relays.contains(&relay), "connect from {relay:?}, which is no open TCP relay");
                assert_eq!(relay.is_ipv6(), peer.is_ipv6(), "connect to {peer} from a relay of the other family");
                if self.refuse_connect.is_some_and(|refuse| refuse(peer)) {
                    server.handle_peer_connected(now, connection, false);
                } else {
                    self.hold(connection);
                    self.connecting.push(connection);
                    self.connects.push((relay, connection, peer));
                }
            }
            Event::ClosePeer { connection } => {
                self.release(connection);
                self.closed_peers.push(connection);
            }
            Event::LookupUser { realm, name } => self.lookups.push((realm, name)),
            observed => self.observed.push(observed),
        }
    }

    /// What must hold between inputs: the open relays are exactly the
    /// live allocations' relayed addresses.
    pub fn check(&self, server: &Server) {
        let table = server.table();
        let relays: BTreeMap<RelayId, SocketAddr> = table
            .iter()
            .filter(|(_, a)| a.is_live())
            .flat_map(|(id, a)| a.relayed_addresses().map(move |r| (RelayId::new(id, r.addr.is_ipv6()), r.addr)))
            .collect();
        assert_eq!(relays, self.open, "open relays differ from the table's allocations");
    }
}
