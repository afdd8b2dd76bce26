//! `tern turn`: checks a TURN server end to end, one step per line:
//! allocate, permission, a round trip through the relay with a Send
//! indication, channel bind, a round trip with ChannelData, then delete.
//!
//! The peer is a second socket of this client unless `--peer` names an echo
//! server. Its address is learned with a Binding request to the TURN server,
//! so it is the address the relay will see and the probe works across NATs;
//! the peer first sends towards the relayed address so a NAT in front of it
//! lets the relay's packets in.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::ClientSocket;
use super::stun::{self, BindingResult};
use super::turn::{AuthOptions, Credentials, Received, TurnError, TurnSession};
use crate::io::clock;
use crate::proto::Transport;

/// The channel the probe binds.
const PROBE_CHANNEL: u16 = 0x4000;

#[derive(Clone, Debug)]
pub struct RelayProbe {
    pub server: SocketAddr,
    pub transport: Transport,
    pub credentials: Credentials,
    pub auth: AuthOptions,
    /// An echo server to use as the peer instead of a socket of our own.
    pub peer: Option<SocketAddr>,
    pub timeout: Duration,
}

/// Where the probe's peer is and how it answers.
enum Peer {
    /// A socket of ours, which echoes what it receives.
    Own { socket: UdpSocket, addr: SocketAddr },
    /// A remote echo server.
    Echo(SocketAddr),
}

impl Peer {
    fn addr(&self) -> SocketAddr {
        match self {
            Self::Own { addr, .. } => *addr,
            Self::Echo(addr) => *addr,
        }
    }
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
        let peer = self.peer()?;
        let socket = ClientSocket::open(self.server, self.transport, self.timeout)
            .map_err(|e| format!("cannot reach {} over {}: {e}", self.server, self.transport))?;
        let mut session = TurnSession::new(socket, self.credentials.clone(), self.timeout).with_auth(self.auth);

        let started = clock::now();
        let allocated = session.allocate(None).map_err(|e| explain("allocate", &e, self, &peer))?;
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
        peer: &Peer,
        relayed: SocketAddr,
    ) -> Result<(), String> {
        let started = clock::now();
        session.create_permission(&[peer.addr()]).map_err(|e| explain("create permission", &e, self, peer))?;
        line(out, "create permission", started, &format!("peer {}", peer.addr()))?;
        if let Peer::Own { socket, .. } = peer {
            // Opens a NAT in front of the peer towards the relay.
            let _ = socket.send_to(b"tern-probe-open", relayed);
        }

        let started = clock::now();
        self.round_trip(session, peer, relayed, None)?;
        line(out, "send indication", started, "round trip through the relay")?;

        let started = clock::now();
        session.channel_bind(PROBE_CHANNEL, peer.addr()).map_err(|e| explain("channel bind", &e, self, peer))?;
        line(out, "channel bind", started, &format!("channel {PROBE_CHANNEL:#06x}"))?;

        let started = clock::now();
        self.round_trip(session, peer, relayed, Some(PROBE_CHANNEL))?;
        line(out, "channel data", started, "round trip through the relay")?;

        let started = clock::now();
        session.refresh(0).map_err(|e| explain("refresh", &e, self, peer))?;
        line(out, "delete", started, "refresh with lifetime 0")?;
        Ok(())
    }

    fn peer(&self) -> Result<Peer, String> {
        if let Some(addr) = self.peer {
            return Ok(Peer::Echo(addr));
        }
        let any = if self.server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(any).map_err(|e| format!("cannot open the peer socket: {e}"))?;
        // Ask the server what address the peer socket has from its side.
        let mut probe = ClientSocket::from_udp(socket.try_clone().map_err(|e| e.to_string())?, self.server);
        let addr = match stun::binding(&mut probe, self.timeout).map_err(|e| e.to_string())? {
            BindingResult::Mapped { address, .. } => address,
            other => return Err(format!("cannot learn the peer socket's address with a Binding request: {other:?}")),
        };
        Ok(Peer::Own { socket, addr })
    }

    /// Sends a payload to the peer through the relay and waits for it to come
    /// back the same way.
    fn round_trip(
        &self,
        session: &mut TurnSession,
        peer: &Peer,
        relayed: SocketAddr,
        channel: Option<u16>,
    ) -> Result<(), String> {
        let payload = format!("tern probe {:016x}", rand::random::<u64>()).into_bytes();
        let how = if channel.is_some() { "ChannelData" } else { "Send indication" };
        match channel {
            Some(channel) => session.send_channel_data(channel, &payload),
            None => session.send_indication(peer.addr(), &payload),
        }
        .map_err(|e| format!("{how}: {e}"))?;
        let deadline = clock::now() + self.timeout;
        if let Peer::Own { socket, .. } = peer {
            let from =
                wait_for(socket, &payload, deadline).map_err(|e| format!("{how} did not reach the peer: {e}"))?;
            if from != relayed {
                return Err(format!("the peer got the data from {from}, not the relayed address {relayed}"));
            }
            socket.send_to(&payload, relayed).map_err(|e| e.to_string())?;
        }
        loop {
            match session.recv_data(deadline).map_err(|e| e.to_string())? {
                Some(Received { data, channel: got_channel, peer: got_peer, icmp: None }) if data == payload => {
                    let expected = match channel {
                        Some(_) => got_channel == channel,
                        None => got_peer == Some(peer.addr()),
                    };
                    return if expected {
                        Ok(())
                    } else {
                        Err(format!("the reply came back as {got_channel:?}/{got_peer:?}, expected {how}"))
                    };
                }
                Some(_) => continue,
                None => return Err(format!("no reply through the relay within {:?} ({how})", self.timeout)),
            }
        }
    }
}

/// Waits for `payload` on the peer socket; returns who sent it.
fn wait_for(socket: &UdpSocket, payload: &[u8], deadline: Instant) -> Result<SocketAddr, String> {
    let mut buf = [0u8; 2048];
    loop {
        let now = clock::now();
        if now >= deadline {
            return Err("timed out".into());
        }
        socket.set_read_timeout(Some(deadline - now)).map_err(|e| e.to_string())?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == payload => return Ok(from),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn line(out: &mut impl Write, step: &str, started: Instant, detail: &str) -> Result<(), String> {
    let ms = (clock::now() - started).as_secs_f64() * 1e3;
    writeln!(out, "{step:<18} ok  {ms:>8.3} ms  {detail}").map_err(|e| e.to_string())
}

/// A failed step, with what the error code usually means for an operator.
fn explain(step: &str, error: &TurnError, probe: &RelayProbe, peer: &Peer) -> String {
    let hint = match error.code() {
        Some(300) => {
            "the server is full and sends new allocations to the alternate server; run the probe against it".into()
        }
        Some(401) => format!(
            "the server refused user {:?}: wrong password, expired REST credential, or another realm",
            probe.credentials.username
        ),
        Some(403) => format!(
            "the server's peer policy refuses {}; a server on this host needs `--allow-peer {}` (or allow_peers in its config)",
            peer.addr().ip(),
            if peer.addr().ip().is_loopback() { "127.0.0.0/8" } else { "<range>" }
        ),
        Some(437) => "allocation mismatch: this 5-tuple already has an allocation, or it expired".into(),
        Some(441) => "the allocation belongs to another user".into(),
        Some(442) => "the server does not relay UDP".into(),
        Some(486) => format!("user {:?} has reached its allocation quota", probe.credentials.username),
        Some(508) => "the server is out of capacity (relay ports or total quota)".into(),
        _ => String::new(),
    };
    if hint.is_empty() { format!("{step}: {error}") } else { format!("{step}: {error}: {hint}") }
}
