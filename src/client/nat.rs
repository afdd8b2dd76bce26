//! `tern nat`: RFC 5780 NAT behaviour discovery against a server that
//! supports it (tern with `rfc5780 = true`, coturn, stuntman).
//!
//! Mapping (§4.3): Binding to the primary address (test I), to the
//! alternate IP at the primary port (II), to the alternate address (III),
//! comparing the mapped addresses. Filtering (§4.4), from a second socket
//! that has sent nothing to the alternate address: CHANGE-REQUEST for
//! another IP and port (II), then for another port only (III); an answer
//! that arrives means the NAT let it in. Hairpinning (§3.4), when there is
//! a NAT: a third socket sends a request to the first one's mapped address.
//!
//! UDP only: the filtering tests need answers from other addresses, which a
//! connection cannot carry. Requests are retransmitted as RFC 8489 §6.2.1
//! says ([`Transaction`]), within the caller's overall timeout per test, and
//! started at most ten a second (RFC 5780 §5).

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::transaction::{TimerAction, Transaction};
use crate::io::clock;
use crate::proto::stun::attr::{self, AttrType, ChangeRequest};
use crate::proto::stun::{Class, HEADER_LEN, Message, MessageType, MessageWriter, Method, TransactionId};

/// RFC 5780 §5: no more than ten new transactions a second.
const TRANSACTION_SPACING: Duration = Duration::from_millis(100);
/// Receive waits are cut into steps this long, so a datagram that is not
/// the answer (a late duplicate) cannot hold the loop past its deadline.
const RECV_STEP: Duration = Duration::from_millis(100);
/// Upper bound on the turns of any receive loop, on top of its deadline.
const MAX_TURNS: usize = 100_000;

/// A NAT behaviour (RFC 4787 §4.1, §5) as RFC 5780 §4 names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl Behaviour {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndpointIndependent => "endpoint-independent",
            Self::AddressDependent => "address-dependent",
            Self::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// What the tests found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NatReport {
    pub server: SocketAddr,
    /// The server's OTHER-ADDRESS.
    pub other_address: SocketAddr,
    /// The address the mapping tests were sent from.
    pub local_address: SocketAddr,
    /// Its mapped address, as test I saw it.
    pub mapped_address: SocketAddr,
    /// Whether the mapped address differs from the local one.
    pub nat: bool,
    pub mapping: Behaviour,
    pub filtering: Behaviour,
    /// Whether the NAT hairpins; `None` without a NAT, where it means nothing.
    pub hairpinning: Option<bool>,
}

impl NatReport {
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "server:      {} (other address {})", self.server, self.other_address);
        let _ = writeln!(text, "local:       {}", self.local_address);
        let _ = writeln!(text, "mapped:      {}", self.mapped_address);
        let nat = if self.nat { "present (the mapped address is not the local one)" } else { "none" };
        let _ = writeln!(text, "NAT:         {nat}");
        let _ = writeln!(text, "mapping:     {}", self.mapping.as_str());
        let _ = writeln!(text, "filtering:   {}", self.filtering.as_str());
        let hairpinning = match self.hairpinning {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not applicable (no NAT)",
        };
        let _ = writeln!(text, "hairpinning: {hairpinning}");
        text
    }
}

/// Why discovery could not complete.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("{test}: no response from {to} within {timeout:?}")]
    NoResponse { test: &'static str, to: SocketAddr, timeout: Duration },
    #[error(
        "{0} does not support RFC 5780 NAT behaviour discovery: its Binding response has no OTHER-ADDRESS \
         (for tern: rfc5780 = true and alternate_ip)"
    )]
    Unsupported(SocketAddr),
    #[error("{test}: error response {code} {reason}")]
    ErrorResponse { test: &'static str, code: u16, reason: String },
    #[error("{test}: invalid response: {why}")]
    Invalid { test: &'static str, why: String },
    #[error(
        "{test}: the response came from {from}, not from {expected} as CHANGE-REQUEST asked; the server does not \
         honour CHANGE-REQUEST, so filtering cannot be told"
    )]
    WrongOrigin { test: &'static str, from: SocketAddr, expected: SocketAddr },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What to probe and how.
#[derive(Clone, Debug)]
pub struct NatProbe {
    pub server: SocketAddr,
    /// The longest one test waits for its answer, retransmissions included.
    pub timeout: Duration,
}

/// A Binding success as the tests read it.
struct Answer {
    mapped: SocketAddr,
    other: Option<SocketAddr>,
    from: SocketAddr,
}

/// Sends requests from one socket, spaced as RFC 5780 §5 asks.
struct Tester {
    timeout: Duration,
    last_start: Option<Instant>,
}

impl NatProbe {
    pub fn run(&self) -> Result<NatReport, NatError> {
        let local_ip = local_ip_towards(self.server)?;
        let mut tester = Tester { timeout: self.timeout, last_start: None };

        // §4.3, mapping.
        let mapping_socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        let local_address = mapping_socket.local_addr()?;
        let first = tester.expect(&mapping_socket, "mapping test I", self.server, None)?;
        let other_address = first.other.ok_or(NatError::Unsupported(self.server))?;
        let nat = first.mapped != local_address;
        let mapping = if nat {
            let alternate_ip = SocketAddr::new(other_address.ip(), self.server.port());
            let second = tester.expect(&mapping_socket, "mapping test II", alternate_ip, None)?;
            if second.mapped == first.mapped {
                Behaviour::EndpointIndependent
            } else {
                let third = tester.expect(&mapping_socket, "mapping test III", other_address, None)?;
                if third.mapped == second.mapped {
                    Behaviour::AddressDependent
                } else {
                    Behaviour::AddressAndPortDependent
                }
            }
        } else {
            Behaviour::EndpointIndependent
        };

        // §4.4, filtering, from a socket that has only talked to the primary address.
        let filtering_socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        tester.expect(&filtering_socket, "filtering test I", self.server, None)?;
        let both = ChangeRequest { change_ip: true, change_port: true };
        let filtering = if tester.changed(&filtering_socket, "filtering test II", self.server, both, other_address)? {
            Behaviour::EndpointIndependent
        } else {
            let port = ChangeRequest { change_ip: false, change_port: true };
            let expected = SocketAddr::new(self.server.ip(), other_address.port());
            if tester.changed(&filtering_socket, "filtering test III", self.server, port, expected)? {
                Behaviour::AddressDependent
            } else {
                Behaviour::AddressAndPortDependent
            }
        };

        let hairpinning = if nat { Some(tester.hairpin(&mapping_socket, first.mapped, local_ip)?) } else { None };
        Ok(NatReport {
            server: self.server,
            other_address,
            local_address,
            mapped_address: first.mapped,
            nat,
            mapping,
            filtering,
            hairpinning,
        })
    }
}

impl Tester {
    /// A Binding transaction that must succeed.
    fn expect(
        &mut self,
        socket: &UdpSocket,
        test: &'static str,
        to: SocketAddr,
        change: Option<ChangeRequest>,
    ) -> Result<Answer, NatError> {
        self.binding(socket, test, to, change)?.ok_or(NatError::NoResponse { test, to, timeout: self.timeout })
    }

    /// A CHANGE-REQUEST transaction: whether its answer arrived, checking
    /// that it came from `expected`.
    fn changed(
        &mut self,
        socket: &UdpSocket,
        test: &'static str,
        to: SocketAddr,
        change: ChangeRequest,
        expected: SocketAddr,
    ) -> Result<bool, NatError> {
        match self.binding(socket, test, to, Some(change))? {
            Some(answer) if answer.from != expected => Err(NatError::WrongOrigin { test, from: answer.from, expected }),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// Sends a Binding request and waits for its answer from any address;
    /// `None` when none came in time.
    fn binding(
        &mut self,
        socket: &UdpSocket,
        test: &'static str,
        to: SocketAddr,
        change: Option<ChangeRequest>,
    ) -> Result<Option<Answer>, NatError> {
        let tid = TransactionId::random();
        let mut request = Vec::new();
        let mut w = MessageWriter::new(&mut request, MessageType::new(Method::BINDING, Class::Request), tid);
        if let Some(change) = change {
            w.attr(AttrType::CHANGE_REQUEST, &change.to_bytes());
        }
        w.finish();
        self.pace();
        socket.send_to(&request, to)?;
        let mut transaction = Transaction::new(clock::now(), false, self.timeout);
        let mut buf = vec![0u8; 65536];
        for _ in 0..MAX_TURNS {
            if let Some((len, from)) = recv_with_tid(socket, tid, transaction.poll_timeout(), &mut buf)? {
                return read_answer(test, &buf[..len], from).map(Some);
            }
            match transaction.handle_timeout(clock::now()) {
                TimerAction::Retransmit => {
                    socket.send_to(&request, to)?;
                }
                TimerAction::TimedOut => return Ok(None),
                TimerAction::Wait => {}
            }
        }
        Ok(None)
    }

    /// §3.4: a request from a fresh socket to `mapped` reaches `socket`
    /// only if the NAT hairpins.
    fn hairpin(&mut self, socket: &UdpSocket, mapped: SocketAddr, local_ip: IpAddr) -> Result<bool, NatError> {
        let sender = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        let tid = TransactionId::random();
        let mut request = Vec::new();
        MessageWriter::new(&mut request, MessageType::new(Method::BINDING, Class::Request), tid).finish();
        self.pace();
        sender.send_to(&request, mapped)?;
        let mut transaction = Transaction::new(clock::now(), false, self.timeout);
        let mut buf = vec![0u8; 65536];
        for _ in 0..MAX_TURNS {
            if recv_with_tid(socket, tid, transaction.poll_timeout(), &mut buf)?.is_some() {
                return Ok(true);
            }
            match transaction.handle_timeout(clock::now()) {
                TimerAction::Retransmit => {
                    sender.send_to(&request, mapped)?;
                }
                TimerAction::TimedOut => return Ok(false),
                TimerAction::Wait => {}
            }
        }
        Ok(false)
    }

    fn pace(&mut self) {
        if let Some(last) = self.last_start {
            let next = last + TRANSACTION_SPACING;
            let now = clock::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
        self.last_start = Some(clock::now());
    }
}

/// The IP this host sends from towards `server`: the socket is connected,
/// which picks a route and a source address, and nothing is sent.
fn local_ip_towards(server: SocketAddr) -> io::Result<IpAddr> {
    let unspecified = if server.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) };
    let probe = UdpSocket::bind(SocketAddr::new(unspecified, 0))?;
    probe.connect(server)?;
    Ok(probe.local_addr()?.ip())
}

/// Waits until `deadline` for a datagram carrying `tid` (from anywhere)
/// and returns its length and source; other datagrams are skipped.
fn recv_with_tid(
    socket: &UdpSocket,
    tid: TransactionId,
    deadline: Instant,
    buf: &mut [u8],
) -> io::Result<Option<(usize, SocketAddr)>> {
    for _ in 0..MAX_TURNS {
        let now = clock::now();
        if now >= deadline {
            return Ok(None);
        }
        socket.set_read_timeout(Some((deadline - now).clamp(Duration::from_millis(1), RECV_STEP)))?;
        match socket.recv_from(buf) {
            Ok((len, from)) => {
                if buf.get(8..HEADER_LEN).is_some_and(|id| id == tid.0) {
                    return Ok(Some((len, from)));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        // An ICMP error from an earlier send; later datagrams are unaffected.
                        | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn read_answer(test: &'static str, bytes: &[u8], from: SocketAddr) -> Result<Answer, NatError> {
    let invalid = |why: String| NatError::Invalid { test, why };
    let message = Message::parse(bytes).map_err(|e| invalid(e.to_string()))?;
    match message.class() {
        Class::Success => {}
        Class::Error => {
            let error = message
                .attribute(AttrType::ERROR_CODE)
                .map(attr::read_error_code)
                .and_then(Result::ok)
                .ok_or_else(|| invalid("error response without a valid ERROR-CODE".into()))?;
            return Err(NatError::ErrorResponse { test, code: error.code, reason: error.reason.to_owned() });
        }
        _ => return Err(invalid("not a response".into())),
    }
    let mapped = match message.attribute(AttrType::XOR_MAPPED_ADDRESS) {
        Some(value) => attr::read_xor_address(value, &message.transaction_id()),
        None => message
            .attribute(AttrType::MAPPED_ADDRESS)
            .map(attr::read_address)
            .ok_or_else(|| invalid("no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS".into()))?,
    }
    .map_err(|e| invalid(e.to_string()))?;
    let other = message
        .attribute(AttrType::OTHER_ADDRESS)
        .map(attr::read_address)
        .transpose()
        .map_err(|e| invalid(format!("OTHER-ADDRESS: {e}")))?;
    Ok(Answer { mapped, other, from })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_reads_as_text_and_json() {
        let report = NatReport {
            server: "192.0.2.1:3478".parse().expect("literal"),
            other_address: "192.0.2.2:3479".parse().expect("literal"),
            local_address: "10.0.0.2:5000".parse().expect("literal"),
            mapped_address: "198.51.100.1:6000".parse().expect("literal"),
            nat: true,
            mapping: Behaviour::AddressAndPortDependent,
            filtering: Behaviour::AddressDependent,
            hairpinning: Some(false),
        };
        let text = report.to_text();
        assert!(text.contains("mapping:     address-and-port-dependent"), "{text}");
        assert!(text.contains("hairpinning: no"), "{text}");
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["mapping"], "address-and-port-dependent");
        assert_eq!(json["filtering"], "address-dependent");
        assert_eq!(json["other_address"], "192.0.2.2:3479");
        assert_eq!(json["hairpinning"], false);
    }

    #[test]
    fn error_responses_and_missing_addresses_are_reported() {
        let tid = TransactionId::random();
        let mut bytes = Vec::new();
        let mut w = MessageWriter::new(&mut bytes, MessageType::new(Method::BINDING, Class::Error), tid);
        w.error_code(crate::proto::stun::ErrorCode::UNKNOWN_ATTRIBUTE, Some("Unknown Attribute"));
        w.finish();
        let from = "192.0.2.1:3478".parse().expect("literal");
        assert!(matches!(read_answer("t", &bytes, from), Err(NatError::ErrorResponse { code: 420, .. })));
        let mut bytes = Vec::new();
        MessageWriter::new(&mut bytes, MessageType::new(Method::BINDING, Class::Success), tid).finish();
        assert!(matches!(read_answer("t", &bytes, from), Err(NatError::Invalid { .. })));
    }
}
