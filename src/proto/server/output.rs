//! What leaves the core: the outcome of one client packet (an answer in the
//! caller's buffer, or data to forward that borrows the packet), messages
//! written later ([`Transmit`]), and [`Event`]s: work for the driver and
//! what observers (usage records, the admin API, a kernel fast path) need to
//! see of every decision.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use crate::proto::FiveTuple;
use crate::proto::allocation::{AllocationId, ClientHandle, RelayId, Relayed, Traffic};
use crate::proto::channel_data::ChannelNumber;
use crate::proto::tcp_relay::ConnectionId;

/// What the driver must do after `handle_client`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutcome {
    /// Nothing to send.
    Dropped,
    /// Nothing to send now: the answer comes later through
    /// [`super::Server::poll_transmit`] (an Allocate waits for its relay
    /// socket, a Connect for its peer).
    Deferred,
    /// A response was appended to the reply buffer; send it to the client.
    Replied,
    /// A response was appended to the reply buffer; send it from the listen
    /// address `source` to `destination` instead of back the way the
    /// request came (RFC 5780 CHANGE-REQUEST and RESPONSE-PORT, UDP only).
    RepliedFrom { source: SocketAddr, destination: SocketAddr },
    /// Send `packet[payload]` from the relay socket `relay` to `peer`.
    Forward { relay: RelayId, peer: SocketAddr, payload: Range<usize> },
    /// A ConnectionBind succeeded (RFC 6062 §5.4): send the response, and
    /// from then on relay the connection's bytes, unframed, to and from the
    /// peer data connection `id`.
    ConnectionBound { id: ConnectionId },
    /// A ConnectionBind names a connection of another worker: nothing was
    /// answered; hand the connection, this frame first, to `worker`, whose
    /// core answers it.
    HandOff { worker: usize },
}

/// Where a peer's packet goes, once `handle_peer` has put a header on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerOutcome {
    pub client: ClientHandle,
    pub tuple: FiveTuple,
    /// The ChannelData message or Data indication within the slot.
    pub frame: (usize, usize),
}

/// An ICMP error about a datagram a relay socket sent (RFC 8656 §11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpReport {
    /// Where the datagram was going.
    pub peer: SocketAddr,
    /// ICMPv6 rather than ICMPv4.
    pub ipv6: bool,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The next-hop MTU the kernel reported with the error, if any.
    pub mtu: u32,
}

/// A message for a client that no packet of this moment answers: an
/// Allocate's answer once its relay is open, a Connect's answer, a
/// ConnectionAttempt, an ICMP error as a Data indication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// How the driver reaches the client.
    pub client: ClientHandle,
    /// The client's 5-tuple: send from `tuple.server` to `tuple.client`.
    pub tuple: FiveTuple,
}

/// The transport of a relay socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayProtocol {
    Udp,
    /// An RFC 6062 allocation's listening socket.
    Tcp,
}

/// Why an allocation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its lifetime passed without a Refresh.
    Expired,
    /// A Refresh with LIFETIME 0.
    Refreshed,
    /// Its TCP or TLS connection closed (RFC 8656 §3.1).
    ConnectionClosed,
    /// The server is stopping.
    Shutdown,
    /// An operator ended it (the admin API).
    Ended,
    /// An operator revoked its user.
    Revoked,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Refreshed => "refreshed with lifetime 0",
            Self::ConnectionClosed => "connection closed",
            Self::Shutdown => "server shutting down",
            Self::Ended => "ended by an operator",
            Self::Revoked => "its user was revoked",
        }
    }
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An allocation as it was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationInfo {
    pub id: AllocationId,
    /// Its name in the admin API and in usage records (see `admin`).
    pub serial: u64,
    /// The user that created it ("" when relaying is anonymous).
    pub user: Box<str>,
    pub realm: Box<str>,
    pub tuple: FiveTuple,
    /// The relayed addresses by family (IPv4, IPv6).
    pub relayed: [Option<Relayed>; 2],
    pub lifetime: Duration,
    /// An RFC 6062 allocation, relaying over TCP connections.
    pub tcp: bool,
}

/// What the core decided, in the order it decided it. The first four are
/// the driver's work; the rest are for observers and need no answer.
///
/// An allocation's permissions and channels end with it: its
/// [`Event::AllocationDeleted`] stands for their expiry too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open a relay socket bound to `addr`, then report with
    /// [`super::Server::handle_relay_opened`]; the id is not reused before.
    OpenRelay {
        relay: RelayId,
        addr: SocketAddr,
        protocol: RelayProtocol,
        dont_fragment: bool,
    },
    /// Close the relay socket of `relay` (UDP or TCP); its port is already
    /// back in the pool.
    CloseRelay {
        relay: RelayId,
        addr: SocketAddr,
    },
    /// Start a TCP connection from the relayed address of `relay` to
    /// `peer` (RFC 6062 §5.2), then report with
    /// [`super::Server::handle_peer_connected`].
    ConnectPeer {
        relay: RelayId,
        connection: ConnectionId,
        peer: SocketAddr,
    },
    /// Close a peer data connection and the client data connection bound
    /// to it.
    ClosePeer {
        connection: ConnectionId,
    },
    /// Ask the store for the keys of `name` in `realm`, then report with
    /// [`super::Server::handle_user_lookup`]: requests wait for the answer.
    LookupUser {
        realm: Box<str>,
        name: Box<str>,
    },
    AllocationCreated(AllocationInfo),
    AllocationRefreshed {
        id: AllocationId,
        lifetime: Duration,
    },
    AllocationDeleted {
        id: AllocationId,
        tuple: FiveTuple,
        reason: DeleteReason,
        traffic: Traffic,
    },
    /// Installed or refreshed, for 300 seconds (RFC 8656 §9).
    PermissionInstalled {
        id: AllocationId,
        peer: IpAddr,
    },
    PermissionExpired {
        id: AllocationId,
        peer: IpAddr,
    },
    /// Bound or refreshed, for 600 seconds (RFC 8656 §12).
    ChannelBound {
        id: AllocationId,
        channel: ChannelNumber,
        peer: SocketAddr,
    },
    ChannelExpired {
        id: AllocationId,
        channel: ChannelNumber,
        peer: SocketAddr,
    },
}

/// Messages written for later, in one byte arena so none costs an
/// allocation of its own.
#[derive(Default)]
pub(super) struct Outbox {
    bytes: Vec<u8>,
    queued: VecDeque<(Transmit, Range<usize>)>,
}

impl Outbox {
    /// Queues the message `write` appends for the client of `transmit`.
    pub(super) fn push(&mut self, transmit: Transmit, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        if self.bytes.len() > start {
            self.queued.push_back((transmit, start..self.bytes.len()));
        }
    }

    /// Appends the oldest message to `buf`.
    pub(super) fn pop_into(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (transmit, range) = self.queued.pop_front()?;
        buf.extend_from_slice(&self.bytes[range]);
        if self.queued.is_empty() {
            self.bytes.clear();
        }
        Some(transmit)
    }

    /// Drops what was queued for `tuple`: the driver may already have given
    /// its handle to another client.
    pub(super) fn forget(&mut self, tuple: &FiveTuple) {
        self.queued.retain(|(transmit, _)| transmit.tuple != *tuple);
        if self.queued.is_empty() {
            self.bytes.clear();
        }
    }
}
