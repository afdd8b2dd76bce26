//! `tern turn`: checks a TURN server end to end, one step per line:
//! allocate, permission, a round trip through the relay with a Send
//! indication, channel bind, a round trip with ChannelData, then delete.
//!
//! The peer is a second socket of this client unless `--peer` names an echo
//! server. Its address is learned with a Binding request to the TURN server,
//! so it is the address the relay will see and the probe works across NATs;
//! the peer first sends towards the relayed address so a NAT in front of it
//! lets the relay's packets in. Over TLS the server's port may serve no UDP,
//! so the peer's address is the client's mapped IP (from the Allocate
//! response) with the peer socket's port: right unless a NAT rewrites ports,
//! where `--peer` is the way.
//!
//! The pieces ([`ProbePeer`], [`round_trip`], [`peer_sends_first`],
//! [`hint`]) are public: `tern doctor` relays with them too.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::ClientSocket;
use super::stun::{self, BindingResult};
use super::tls::TlsClient;
use super::turn::{AuthOptions, Credentials, Received, TurnError, TurnSession};
use crate::io::clock;
use crate::proto::Transport;

/// The channel the probe binds.
pub const PROBE_CHANNEL: u16 = 0x4000;

#[derive(Clone, Debug)]
pub struct RelayProbe {
    pub server: SocketAddr,
    pub transport: Transport,
    /// Required over TLS.
    pub tls: Option<TlsClient>,
    pub credentials: Credentials,
    pub auth: AuthOptions,
    /// An echo server to use as the peer instead of a socket of our own.
    pub peer: Option<SocketAddr>,
    pub timeout: Duration,
}

/// Where the probe's peer is and how it answers.
pub enum ProbePeer {
    /// A socket of ours, which echoes what it receives.
    Own { socket: UdpSocket, addr: SocketAddr },
    /// A remote echo server.
    Echo(SocketAddr),
    /// A socket of ours whose address is learned from the Allocate response.
    Unmapped(UdpSocket),
}

impl ProbePeer {
    /// The echo server `echo` when given, else a socket of this client whose
    /// address is asked of `server` with a Binding request, which is the
    /// address the relay will see. Over TLS the server's port may serve no
    /// UDP, so the address waits for [`Self::learn_address`].
    pub fn open(
        server: SocketAddr,
        transport: Transport,
        echo: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<Self, String> {
        if let Some(addr) = echo {
            return Ok(Self::Echo(addr));
        }
        if transport == Transport::Tls {
            return Self::unmapped(server);
        }
        let socket = peer_socket(server)?;
        let mut probe = ClientSocket::from_udp(socket.try_clone().map_err(|e| e.to_string())?, server);
        let addr = match stun::binding(&mut probe, timeout).map_err(|e| e.to_string())? {
            BindingResult::Mapped { address, .. } => address,
            other => return Err(format!("cannot learn the peer socket's address with a Binding request: {other:?}")),
        };
        Ok(Self::Own { socket, addr })
    }

    /// A socket of this client as the peer, its address to be learned from
    /// the Allocate response ([`Self::learn_address`]).
    pub fn unmapped(server: SocketAddr) -> Result<Self, String> {
        peer_socket(server).map(Self::Unmapped)
    }

    /// Gives an unmapped peer the client's mapped IP (from the Allocate
    /// response) with the peer socket's port: right unless a NAT rewrites
    /// ports.
    pub fn learn_address(self, mapped: IpAddr) -> Result<Self, String> {
        match self {
            Self::Unmapped(socket) => {
                let port = socket.local_addr().map_err(|e| e.to_string())?.port();
                Ok(Self::Own { socket, addr: SocketAddr::new(mapped, port) })
            }
            known => Ok(known),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Own { addr, .. } => *addr,
            Self::Echo(addr) => *addr,
            Self::Unmapped(socket) => socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }

    /// Sends `payload` from a peer socket of ours to the relayed address,
    /// which also opens a NAT in front of the peer towards the relay. An
    /// echo server sends nothing of its own accord, so this is a no-op.
    pub fn send_to_relay(&self, payload: &[u8], relayed: SocketAddr) -> std::io::Result<()> {
        match self {
            Self::Own { socket, .. } | Self::Unmapped(socket) => socket.send_to(payload, relayed).map(drop),
            Self::Echo(_) => Ok(()),
        }
    }
}

/// Why data did not make it through the relay, told apart so a caller can
/// say which leg failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    #[error("{how}: {source}")]
    Send {
        how: &'static str,
        #[source]
        source: TurnError,
    },
    /// The client's data never came out of the relay (client → peer leg).
    #[error("{how} did not reach the peer within {timeout:?}")]
    NotAtPeer { how: &'static str, timeout: Duration },
    /// It came out of another address than the relayed one: a NAT in front
    /// of the relay rewrites it.
    #[error("the peer got the data from {from}, not the relayed address {relayed}")]
    WrongSource { from: SocketAddr, relayed: SocketAddr },
    /// The peer's answer never reached the client (peer → client leg).
    #[error("no reply through the relay within {timeout:?} ({how})")]
    NoReply { how: &'static str, timeout: Duration },
    #[error("the reply came back as channel {channel:?}, peer {peer:?}; expected a {how}")]
    WrongKind { how: &'static str, channel: Option<u16>, peer: Option<SocketAddr> },
    /// The check needs a peer socket of this client.
    #[error("the peer is an echo server, which cannot send first")]
    EchoPeer,
    #[error("receiving through the relay: {0}")]
    Receive(#[source] TurnError),
    #[error("peer socket: {0}")]
    Peer(#[source] std::io::Error),
}

impl RelayProbe {
    /// Runs every step, printing one line each to `out`. Returns true when
    /// all succeeded.
    pub fn run(&self, out: &mut impl Write) -> std::io::Result<bool> {
        match self.steps(out) {
            Ok(()) => Ok(true),
            Err(message) => {
                writeln!(out, "FAILED: {message}")?;
                Ok(false)
            }
        }
    }

    fn steps(&self, out: &mut impl Write) -> Result<(), String> {
        let peer = ProbePeer::open(self.server, self.transport, self.peer, self.timeout)?;
        let socket = ClientSocket::connect(self.server, self.transport, self.tls.as_ref(), self.timeout)
            .map_err(|e| format!("cannot reach {} over {}: {e}", self.server, self.transport))?;
        let mut session = TurnSession::new(socket, self.credentials.clone(), self.timeout).with_auth(self.auth);

        let started = clock::now();
        let allocated = session.allocate(None).map_err(|e| self.explain("allocate", &e, &peer))?;
        let peer = peer.learn_address(allocated.mapped.ip())?;
        line(
            out,
            "allocate",
            started,
            &format!(
                "relayed {}  mapped {}  lifetime {} s  realm {:?}  auth {}",
                allocated.relayed,
                allocated.mapped,
                allocated.lifetime,
                session.realm().unwrap_or(""),
                session.auth().map_or("none", |auth| auth.describe()),
            ),
        )?;

        let result = self.relay_steps(out, &mut session, &peer, allocated.relayed);
        if result.is_err() {
            // Do not leave the allocation behind for its lifetime.
            let _ = session.refresh(0);
        }
        result
    }

    fn relay_steps(
        &self,
        out: &mut impl Write,
        session: &mut TurnSession,
        peer: &ProbePeer,
        relayed: SocketAddr,
    ) -> Result<(), String> {
        let started = clock::now();
        session.create_permission(&[peer.addr()]).map_err(|e| self.explain("create permission", &e, peer))?;
        line(out, "create permission", started, &format!("peer {}", peer.addr()))?;
        // Opens a NAT in front of the peer towards the relay.
        let _ = peer.send_to_relay(b"tern-probe-open", relayed);

        let started = clock::now();
        round_trip(session, peer, relayed, None, self.timeout).map_err(|e| e.to_string())?;
        line(out, "send indication", started, "round trip through the relay")?;

        let started = clock::now();
        session.channel_bind(PROBE_CHANNEL, peer.addr()).map_err(|e| self.explain("channel bind", &e, peer))?;
        line(out, "channel bind", started, &format!("channel {PROBE_CHANNEL:#06x}"))?;

        let started = clock::now();
        round_trip(session, peer, relayed, Some(PROBE_CHANNEL), self.timeout).map_err(|e| e.to_string())?;
        line(out, "channel data", started, "round trip through the relay")?;

        let started = clock::now();
        session.refresh(0).map_err(|e| self.explain("refresh", &e, peer))?;
        line(out, "delete", started, "refresh with lifetime 0")?;
        Ok(())
    }

    /// A failed step, with what the error code usually means for an operator.
    fn explain(&self, step: &str, error: &TurnError, peer: &ProbePeer) -> String {
        match hint(error, &self.credentials.username, peer.addr()) {
            Some(hint) => format!("{step}: {error}: {hint}"),
            None => format!("{step}: {error}"),
        }
    }
}

/// Sends a payload to the peer through the relay (a Send indication, or
/// ChannelData on `channel`) and waits, at most `timeout` in all, for it
/// to come back the same way. A peer socket of ours checks that the data
/// came from the relayed address and echoes it.
pub fn round_trip(
    session: &mut TurnSession,
    peer: &ProbePeer,
    relayed: SocketAddr,
    channel: Option<u16>,
    timeout: Duration,
) -> Result<(), RoundTripError> {
    let payload = probe_payload();
    let how = if channel.is_some() { "ChannelData" } else { "Send indication" };
    match channel {
        Some(channel) => session.send_channel_data(channel, &payload),
        None => session.send_indication(peer.addr(), &payload),
    }
    .map_err(|source| RoundTripError::Send { how, source })?;
    let deadline = clock::now() + timeout;
    if let ProbePeer::Own { socket, .. } = peer {
        let from = wait_for(socket, &payload, deadline)
            .map_err(RoundTripError::Peer)?
            .ok_or(RoundTripError::NotAtPeer { how, timeout })?;
        if from != relayed {
            return Err(RoundTripError::WrongSource { from, relayed });
        }
        socket.send_to(&payload, relayed).map_err(RoundTripError::Peer)?;
    }
    let received = wait_for_relayed(session, &payload, deadline)?.ok_or(RoundTripError::NoReply { how, timeout })?;
    let expected = match channel {
        Some(_) => received.channel == channel,
        None => received.peer == Some(peer.addr()),
    };
    if expected {
        Ok(())
    } else {
        Err(RoundTripError::WrongKind { how, channel: received.channel, peer: received.peer })
    }
}

/// A datagram the peer sends to the relayed address before the relay has
/// sent it anything (after a permission for it): it reaches the client as a
/// Data indication only if nothing in front of the relay drops unsolicited
/// traffic to the relay ports. Waits at most `timeout`.
pub fn peer_sends_first(
    session: &mut TurnSession,
    peer: &ProbePeer,
    relayed: SocketAddr,
    timeout: Duration,
) -> Result<(), RoundTripError> {
    let how = "datagram from the peer";
    let ProbePeer::Own { socket, addr } = peer else { return Err(RoundTripError::EchoPeer) };
    let payload = probe_payload();
    socket.send_to(&payload, relayed).map_err(RoundTripError::Peer)?;
    let received =
        wait_for_relayed(session, &payload, clock::now() + timeout)?.ok_or(RoundTripError::NoReply { how, timeout })?;
    if received.peer == Some(*addr) {
        Ok(())
    } else {
        Err(RoundTripError::WrongKind { how: "Data indication", channel: received.channel, peer: received.peer })
    }
}

fn peer_socket(server: SocketAddr) -> Result<UdpSocket, String> {
    let any = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    UdpSocket::bind(any).map_err(|e| format!("cannot open the peer socket: {e}"))
}

fn probe_payload() -> Vec<u8> {
    format!("tern probe {:016x}", rand::random::<u64>()).into_bytes()
}

/// Waits until `deadline` for `payload` to arrive through the relay;
/// anything else that arrives meanwhile is passed over.
fn wait_for_relayed(
    session: &mut TurnSession,
    payload: &[u8],
    deadline: Instant,
) -> Result<Option<Received>, RoundTripError> {
    loop {
        match session.recv_data(deadline).map_err(RoundTripError::Receive)? {
            Some(received) if received.icmp.is_none() && received.data == payload => return Ok(Some(received)),
            Some(_) => continue,
            None => return Ok(None),
        }
    }
}

/// Waits until `deadline` for `payload` on the peer socket; returns who
/// sent it, or `None` at the deadline.
fn wait_for(socket: &UdpSocket, payload: &[u8], deadline: Instant) -> std::io::Result<Option<SocketAddr>> {
    let mut buf = [0u8; 2048];
    loop {
        let now = clock::now();
        if now >= deadline {
            return Ok(None);
        }
        socket.set_read_timeout(Some(deadline - now))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == payload => return Ok(Some(from)),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn line(out: &mut impl Write, step: &str, started: Instant, detail: &str) -> Result<(), String> {
    let ms = (clock::now() - started).as_secs_f64() * 1e3;
    writeln!(out, "{step:<18} ok  {ms:>8.3} ms  {detail}").map_err(|e| e.to_string())
}

/// What a TURN error code usually means for an operator, for `user`'s
/// requests about `peer`.
pub fn hint(error: &TurnError, user: &str, peer: SocketAddr) -> Option<String> {
    let hint = match error.code()? {
        300 => "the server is full and sends new allocations to the alternate server; run the probe against it".into(),
        401 => format!("the server refused user {user:?}: wrong password, expired REST credential, or another realm"),
        403 => format!(
            "the server's peer policy refuses {}; a server on this host needs `--allow-peer {}` (or allow_peers in its config)",
            peer.ip(),
            if peer.ip().is_loopback() { "127.0.0.0/8" } else { "<range>" }
        ),
        437 => "allocation mismatch: this 5-tuple already has an allocation, or it expired".into(),
        441 => "the allocation belongs to another user".into(),
        442 => "the server does not relay UDP".into(),
        486 => format!("user {user:?} has reached its allocation quota"),
        508 => "the server is out of capacity (relay ports or total quota)".into(),
        _ => return None,
    };
    Some(hint)
}
