//! A TURN client session (RFC 8656 §7-§12) over one [`ClientSocket`]: the
//! long-term credential dance of RFC 8489 §9.2 (401 → credentials, 438 → new
//! nonce), requests whose responses must carry a valid MESSAGE-INTEGRITY, and
//! the data path both ways. Used by `tern turn` and by tests; it talks to any
//! TURN server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ClientSocket, TransactError};
use crate::proto::channel_data::{self, ChannelData};
use crate::proto::demux::{self, PacketKind};
use crate::proto::error::ParseError;
use crate::proto::stun::attr::{self, AttrType, FAMILY_IPV6};
use crate::proto::stun::integrity::long_term_key_md5;
use crate::proto::stun::{Class, ErrorCode, Message, MessageType, MessageWriter, Method, TransactionId};

/// Retries of one request after 401 or 438: enough for "challenge, then
/// stale nonce once", not enough to loop on a server that never accepts.
const AUTH_ATTEMPTS: usize = 3;
/// REQUESTED-TRANSPORT value for UDP.
const PROTOCOL_UDP: u8 = 17;
/// REQUESTED-TRANSPORT value for TCP (RFC 6062).
const PROTOCOL_TCP: u8 = 6;

/// Long-term credentials.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Why a TURN operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("{code} {}{}", ErrorCode(*code).reason(), if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    Rejected { code: u16, reason: String },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error(
        "response without a valid MESSAGE-INTEGRITY: the server does not know these credentials, or something altered it"
    )]
    Integrity,
    #[error("invalid response: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl TurnError {
    /// The STUN error code, if the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<TransactError> for TurnError {
    fn from(error: TransactError) -> Self {
        match error {
            TransactError::Timeout(timeout) => Self::Timeout(timeout),
            TransactError::Io(e) => Self::Io(e),
        }
    }
}

/// The result of a successful Allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocated {
    pub relayed: SocketAddr,
    /// The second relayed address of a dual allocation.
    pub also_relayed: Option<SocketAddr>,
    pub mapped: SocketAddr,
    pub lifetime: u32,
    /// ADDRESS-ERROR-CODE: the family a dual allocation did not get, and why.
    pub address_error: Option<(u8, u16)>,
}

/// Data that arrived from a peer through the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The peer, for a Data indication.
    pub peer: Option<SocketAddr>,
    /// The channel, for ChannelData.
    pub channel: Option<u16>,
    pub data: Vec<u8>,
    /// An ICMP error the relay got for what was sent to `peer` (then `data`
    /// is empty).
    pub icmp: Option<Icmp>,
}

/// The ICMP attribute of a Data indication (RFC 8656 §18.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    /// The next-hop MTU for "fragmentation needed" and "packet too big".
    pub error_data: u32,
}

/// A ConnectionAttempt indication (RFC 6062 §4.4): a peer connected to
/// the relayed address of a TCP allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionAttempt {
    pub peer: SocketAddr,
    pub connection_id: u32,
}

/// What signs requests once the long-term dance is done; the load generator
/// keeps it to refresh allocations from its own event loop.
#[derive(Clone, Debug)]
pub struct AuthState {
    pub username: String,
    pub realm: String,
    pub nonce: Vec<u8>,
    pub key: [u8; 16],
}

impl AuthState {
    /// Adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY to a request.
    pub fn sign(&self, w: &mut MessageWriter<'_>) {
        w.attr(AttrType::USERNAME, self.username.as_bytes())
            .attr(AttrType::REALM, self.realm.as_bytes())
            .attr(AttrType::NONCE, &self.nonce)
            .message_integrity(&self.key);
    }
}

pub struct TurnSession {
    socket: ClientSocket,
    credentials: Credentials,
    timeout: Duration,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<[u8; 16]>,
    received: VecDeque<Received>,
    attempts: VecDeque<ConnectionAttempt>,
    buf: Vec<u8>,
}

impl TurnSession {
    pub fn new(socket: ClientSocket, credentials: Credentials, timeout: Duration) -> Self {
        Self {
            socket,
            credentials,
            timeout,
            realm: None,
            nonce: None,
            key: None,
            received: VecDeque::new(),
            attempts: VecDeque::new(),
            buf: Vec::with_capacity(2048),
        }
    }

    pub fn socket(&self) -> &ClientSocket {
        &self.socket
    }

    /// The socket and, once authenticated, what signs further requests.
    pub fn into_parts(self) -> (ClientSocket, Option<AuthState>) {
        let auth = match (self.realm, self.nonce, self.key) {
            (Some(realm), Some(nonce), Some(key)) => {
                Some(AuthState { username: self.credentials.username, realm, nonce, key })
            }
            _ => None,
        };
        (self.socket, auth)
    }

    /// The realm the server announced, once it has.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// What signs requests, once the server has challenged us: a data
    /// connection's ConnectionBind is signed the same way (RFC 6062 §4.4).
    pub fn auth(&self) -> Option<AuthState> {
        match (&self.realm, &self.nonce, &self.key) {
            (Some(realm), Some(nonce), Some(key)) => Some(AuthState {
                username: self.credentials.username.clone(),
                realm: realm.clone(),
                nonce: nonce.clone(),
                key: *key,
            }),
            _ => None,
        }
    }

    /// Allocate for a TCP relay (RFC 6062 §4.1); needs a TCP connection to
    /// the server. With `ipv6` the relayed address is IPv6
    /// (REQUESTED-ADDRESS-FAMILY).
    pub fn allocate_tcp(&mut self, ipv6: bool) -> Result<Allocated, TurnError> {
        self.allocate_for(PROTOCOL_TCP, |w| {
            if ipv6 {
                w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[FAMILY_IPV6, 0, 0, 0]);
            }
        })
    }

    /// Connect (RFC 6062 §4.3): the server opens a TCP connection to `peer`
    /// from the relayed address. Returns its CONNECTION-ID.
    pub fn connect(&mut self, peer: SocketAddr) -> Result<u32, TurnError> {
        let response = self.request(Method::CONNECT, |w| {
            w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer);
        })?;
        let message = Message::parse(&response).map_err(|e| TurnError::Invalid(e.to_string()))?;
        message
            .attribute(AttrType::CONNECTION_ID)
            .map(attr::read_u32)
            .transpose()
            .map_err(|e| TurnError::Invalid(e.to_string()))?
            .ok_or_else(|| TurnError::Invalid("Connect success without CONNECTION-ID".into()))
    }

    /// The next ConnectionAttempt indication, waiting until `deadline`.
    /// Data indications that arrive meanwhile are kept for [`Self::recv_data`].
    pub fn connection_attempt(&mut self, deadline: Instant) -> Result<Option<ConnectionAttempt>, TurnError> {
        if let Some(attempt) = self.attempts.pop_front() {
            return Ok(Some(attempt));
        }
        let mut frame = std::mem::take(&mut self.buf);
        let result = loop {
            match self.socket.recv(deadline, &mut frame) {
                Ok(true) => {
                    if let Some(attempt) = parse_connection_attempt(&frame) {
                        break Ok(Some(attempt));
                    }
                    if let Some(received) = parse_data(&frame) {
                        self.received.push_back(received);
                    }
                }
                Ok(false) => break Ok(None),
                Err(e) => break Err(e.into()),
            }
        };
        self.buf = frame;
        result
    }

    /// Allocate (RFC 8656 §7.1) for a UDP relay.
    pub fn allocate(&mut self, lifetime: Option<u32>) -> Result<Allocated, TurnError> {
        self.allocate_with(|w| {
            if let Some(lifetime) = lifetime {
                w.attr_u32(AttrType::LIFETIME, lifetime);
            }
        })
    }

    /// Allocate an IPv4 and an IPv6 relayed address at once (RFC 8656 §7.2,
    /// ADDITIONAL-ADDRESS-FAMILY). A server that grants only one says why
    /// not the other in [`Allocated::address_error`].
    pub fn allocate_dual(&mut self) -> Result<Allocated, TurnError> {
        self.allocate_with(|w| {
            w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[FAMILY_IPV6, 0, 0, 0]);
        })
    }

    fn allocate_with(&mut self, attributes: impl Fn(&mut MessageWriter<'_>)) -> Result<Allocated, TurnError> {
        self.allocate_for(PROTOCOL_UDP, attributes)
    }

    fn allocate_for(
        &mut self,
        protocol: u8,
        attributes: impl Fn(&mut MessageWriter<'_>),
    ) -> Result<Allocated, TurnError> {
        let response = self.request(Method::ALLOCATE, |w| {
            w.attr(AttrType::REQUESTED_TRANSPORT, &[protocol, 0, 0, 0]);
            attributes(w);
        })?;
        let message = Message::parse(&response).map_err(|e| TurnError::Invalid(e.to_string()))?;
        let tid = message.transaction_id();
        let invalid = |e: ParseError| TurnError::Invalid(e.to_string());
        let mut relayed = message
            .attributes()
            .filter(|a| a.typ == AttrType::XOR_RELAYED_ADDRESS)
            .map(|a| attr::read_xor_address(a.value, &tid).map_err(invalid));
        let (first, also_relayed) = (relayed.next(), relayed.next());
        let relayed = first.ok_or_else(|| TurnError::Invalid("no XOR-RELAYED-ADDRESS".into()))??;
        let also_relayed = also_relayed.transpose()?;
        let mapped = message
            .attribute(AttrType::XOR_MAPPED_ADDRESS)
            .ok_or_else(|| TurnError::Invalid("no XOR-MAPPED-ADDRESS".into()))
            .and_then(|v| attr::read_xor_address(v, &tid).map_err(invalid))?;
        let lifetime = message
            .attribute(AttrType::LIFETIME)
            .map(attr::read_u32)
            .transpose()
            .map_err(invalid)?
            .ok_or_else(|| TurnError::Invalid("no LIFETIME".into()))?;
        let address_error = message
            .attribute(AttrType::ADDRESS_ERROR_CODE)
            .map(attr::read_address_error_code)
            .transpose()
            .map_err(invalid)?
            .map(|(family, code)| (family, code.code));
        Ok(Allocated { relayed, also_relayed, mapped, lifetime, address_error })
    }

    /// Refresh (RFC 8656 §7.3); 0 deletes the allocation. Returns the granted lifetime.
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32, TurnError> {
        let response = self.request(Method::REFRESH, |w| {
            w.attr_u32(AttrType::LIFETIME, lifetime);
        })?;
        let message = Message::parse(&response).map_err(|e| TurnError::Invalid(e.to_string()))?;
        message
            .attribute(AttrType::LIFETIME)
            .map(attr::read_u32)
            .transpose()
            .map_err(|e| TurnError::Invalid(e.to_string()))?
            .ok_or_else(|| TurnError::Invalid("no LIFETIME".into()))
    }

    /// CreatePermission (RFC 8656 §10) for every peer's IP.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), TurnError> {
        self.request(Method::CREATE_PERMISSION, |w| {
            for peer in peers {
                w.xor_address(AttrType::XOR_PEER_ADDRESS, peer);
            }
        })
        .map(drop)
    }

    /// ChannelBind (RFC 8656 §11).
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), TurnError> {
        self.request(Method::CHANNEL_BIND, |w| {
            let mut value = [0u8; 4];
            value[..2].copy_from_slice(&channel.to_be_bytes());
            w.attr(AttrType::CHANNEL_NUMBER, &value);
            w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer);
        })
        .map(drop)
    }

    /// A Send indication (RFC 8656 §11.1).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), TurnError> {
        let mut frame = Vec::with_capacity(data.len() + 64);
        let mut w =
            MessageWriter::new(&mut frame, MessageType::new(Method::SEND, Class::Indication), TransactionId::random());
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer).attr(AttrType::DATA, data);
        self.socket.send(&frame)?;
        Ok(())
    }

    /// ChannelData (RFC 8656 §12.4), padded on stream transports.
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> Result<(), TurnError> {
        let number = channel_data::ChannelNumber::new_rfc5766(channel)
            .ok_or_else(|| TurnError::Invalid(format!("channel {channel:#06x} outside 0x4000-0x7FFF")))?;
        let len = u16::try_from(data.len()).map_err(|_| TurnError::Invalid("data over 64 KiB".into()))?;
        let mut header = [0u8; channel_data::HEADER_LEN];
        channel_data::write_header(&mut header, number, len);
        let mut frame = header.to_vec();
        frame.extend_from_slice(data);
        if self.socket.transport().is_stream() {
            frame.resize(channel_data::padded_frame_len(data.len()), 0);
        }
        self.socket.send(&frame)?;
        Ok(())
    }

    /// The next data from a peer, waiting until `deadline`.
    pub fn recv_data(&mut self, deadline: Instant) -> Result<Option<Received>, TurnError> {
        if let Some(received) = self.received.pop_front() {
            return Ok(Some(received));
        }
        let mut frame = std::mem::take(&mut self.buf);
        let result = loop {
            match self.socket.recv(deadline, &mut frame) {
                Ok(true) => {
                    if let Some(received) = parse_data(&frame) {
                        break Ok(Some(received));
                    }
                }
                Ok(false) => break Ok(None),
                Err(e) => break Err(e.into()),
            }
        };
        self.buf = frame;
        result
    }

    /// Sends a request, answering a 401 or 438 challenge with credentials, and
    /// returns the success response after checking its MESSAGE-INTEGRITY.
    fn request(&mut self, method: Method, attributes: impl Fn(&mut MessageWriter<'_>)) -> Result<Vec<u8>, TurnError> {
        for _ in 0..AUTH_ATTEMPTS {
            let mut request = Vec::with_capacity(256);
            let mut w =
                MessageWriter::new(&mut request, MessageType::new(method, Class::Request), TransactionId::random());
            attributes(&mut w);
            if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key) {
                w.attr(AttrType::USERNAME, self.credentials.username.as_bytes())
                    .attr(AttrType::REALM, realm.as_bytes())
                    .attr(AttrType::NONCE, nonce)
                    .message_integrity(key);
            }
            let mut response = Vec::new();
            let (received, attempts) = (&mut self.received, &mut self.attempts);
            self.socket.transact(&request, self.timeout, &mut response, |frame| {
                if let Some(data) = parse_data(frame) {
                    received.push_back(data);
                } else if let Some(attempt) = parse_connection_attempt(frame) {
                    attempts.push_back(attempt);
                }
            })?;
            let message = Message::parse(&response).map_err(|e| TurnError::Invalid(e.to_string()))?;
            if message.class() == Class::Success {
                if let Some(key) = &self.key
                    && !message.verify_integrity(key)
                {
                    return Err(TurnError::Integrity);
                }
                return Ok(response);
            }
            // RFC 8489 §9.2.5: a signed error response must verify too.
            if let Some(key) = &self.key
                && message.has_integrity()
                && !message.verify_integrity(key)
            {
                return Err(TurnError::Integrity);
            }
            let error = message
                .attribute(AttrType::ERROR_CODE)
                .map(attr::read_error_code)
                .ok_or_else(|| TurnError::Invalid("error response without ERROR-CODE".into()))?
                .map_err(|e| TurnError::Invalid(e.to_string()))?;
            let challenged = error.code == ErrorCode::UNAUTHENTICATED.0 && self.key.is_none();
            let stale = error.code == ErrorCode::STALE_NONCE.0;
            if !(challenged || stale) {
                return Err(TurnError::Rejected { code: error.code, reason: error.reason.to_owned() });
            }
            let realm = message.attribute(AttrType::REALM).and_then(|r| std::str::from_utf8(r).ok());
            let nonce = message.attribute(AttrType::NONCE);
            let (Some(realm), Some(nonce)) = (realm, nonce) else {
                return Err(TurnError::Invalid(format!("{} without REALM and NONCE", error.code)));
            };
            self.key = Some(long_term_key_md5(&self.credentials.username, realm, &self.credentials.password));
            self.realm = Some(realm.to_owned());
            self.nonce = Some(nonce.to_vec());
        }
        Err(TurnError::Rejected { code: ErrorCode::UNAUTHENTICATED.0, reason: "credentials refused".into() })
    }
}

/// A ConnectionAttempt indication, if `frame` is one.
fn parse_connection_attempt(frame: &[u8]) -> Option<ConnectionAttempt> {
    let message = Message::parse(frame).ok()?;
    if message.message_type() != MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication) {
        return None;
    }
    let peer =
        attr::read_xor_address(message.attribute(AttrType::XOR_PEER_ADDRESS)?, &message.transaction_id()).ok()?;
    let connection_id = attr::read_u32(message.attribute(AttrType::CONNECTION_ID)?).ok()?;
    Some(ConnectionAttempt { peer, connection_id })
}

/// A Data indication or ChannelData frame, if `frame` is one.
fn parse_data(frame: &[u8]) -> Option<Received> {
    match demux::classify(frame) {
        PacketKind::ChannelData => {
            let data = ChannelData::parse(frame).ok()?;
            Some(Received { peer: None, channel: Some(data.channel.get()), data: data.payload.to_vec(), icmp: None })
        }
        PacketKind::Stun => {
            let message = Message::parse(frame).ok()?;
            if message.message_type() != MessageType::new(Method::DATA, Class::Indication) {
                return None;
            }
            let peer =
                attr::read_xor_address(message.attribute(AttrType::XOR_PEER_ADDRESS)?, &message.transaction_id())
                    .ok()?;
            // RFC 8656 §11.5: an ICMP error about what we sent to the peer
            // comes as a Data indication with ICMP instead of DATA.
            let icmp = match message.attribute(AttrType::ICMP) {
                Some([_, _, icmp_type, code, data @ ..]) => {
                    let error_data = u32::from_be_bytes(data.try_into().ok()?);
                    Some(Icmp { icmp_type: *icmp_type, code: *code, error_data })
                }
                Some(_) => return None,
                None => None,
            };
            let data = match icmp {
                Some(_) => Vec::new(),
                None => message.attribute(AttrType::DATA)?.to_vec(),
            };
            Some(Received { peer: Some(peer), channel: None, data, icmp })
        }
        PacketKind::Other => None,
    }
}
