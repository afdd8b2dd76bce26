//! A TURN client session (RFC 8656 §7-§12) over one [`ClientSocket`]: the
//! long-term credential dance of RFC 8489 §9.2 (401 → credentials, 438 → new
//! nonce), requests whose responses must carry valid integrity, and the data
//! path both ways. Used by `tern turn` and by tests; it talks to any TURN
//! server.
//!
//! Against a server that offers PASSWORD-ALGORITHMS (RFC 8489 §9.2.5) the
//! client echoes the list, picks SHA-256 when offered (RFC 8656 §6) and signs
//! with MESSAGE-INTEGRITY-SHA256; against an RFC 5389 server, or when told to
//! behave like one ([`AuthMode::Legacy`], what browsers do), it uses the MD5
//! key and MESSAGE-INTEGRITY. A 300 Try Alternate (RFC 8489 §10) ends the
//! request with the alternate server's address.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{ClientSocket, TransactError};
use crate::proto::auth::{LongTermKey, NONCE_COOKIE, PasswordAlgorithm, userhash};
use crate::proto::channel_data::{self, ChannelData};
use crate::proto::demux::{self, PacketKind};
use crate::proto::error::ParseError;
use crate::proto::stun::attr::{self, AttrType, FAMILY_IPV6};
use crate::proto::stun::{Class, ErrorCode, Message, MessageType, MessageWriter, Method, TransactionId, indication};

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
    /// 300 Try Alternate: the server sends new allocations elsewhere.
    #[error("try alternate server {0} (300 Try Alternate)")]
    TryAlternate(SocketAddr),
    /// The server's challenge cannot be answered as asked.
    #[error("{0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl TurnError {
    /// The STUN error code, if the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            Self::TryAlternate(_) => Some(ErrorCode::TRY_ALTERNATE.0),
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

/// Which long-term credential mechanism the client speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// RFC 8489 with SHA-256 when the server offers PASSWORD-ALGORITHMS,
    /// RFC 5389 (MD5) when it does not.
    #[default]
    Auto,
    /// RFC 5389, as browsers do: MD5 key, MESSAGE-INTEGRITY, USERNAME, no
    /// password-algorithm attributes, whatever the server offers.
    Legacy,
    /// RFC 8489 with SHA-256; a server that does not offer it is an error.
    Sha256,
}

/// How the client authenticates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthOptions {
    pub mode: AuthMode,
    /// Send USERHASH instead of USERNAME (RFC 8489 §14.4). Also done, as
    /// §9.2.5 requires, when the server's nonce announces "Username
    /// anonymity".
    pub userhash: bool,
}

/// The security features a nonce cookie announces (RFC 8489 §9.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SecurityFeatures {
    password_algorithms: bool,
    username_anonymity: bool,
}

impl SecurityFeatures {
    /// Reads the 24 bits after the cookie. Bit 0 is "Password algorithms"
    /// and bit 1 "Username anonymity", but servers disagree on whether bit 0
    /// is the most or the least significant (tern's server uses the least;
    /// see `proto::auth`). The two readings use different bits for these two
    /// features, so either reading counts.
    fn of(nonce: &[u8]) -> Self {
        let mut bytes = [0u8; 6];
        let value = nonce
            .strip_prefix(NONCE_COOKIE)
            .and_then(|rest| rest.get(..4))
            .and_then(|encoded| STANDARD.decode_slice(encoded, &mut bytes).ok())
            .filter(|len| *len == 3)
            .map_or(0, |_| u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]));
        Self { password_algorithms: value & (1 | 1 << 23) != 0, username_anonymity: value & (1 << 1 | 1 << 22) != 0 }
    }
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
    pub key: LongTermKey,
    /// PASSWORD-ALGORITHMS as the server sent it, echoed in every request
    /// with PASSWORD-ALGORITHM; `None` for RFC 5389 (MESSAGE-INTEGRITY).
    pub algorithms: Option<Vec<u8>>,
    /// Send USERHASH instead of USERNAME.
    pub userhash: bool,
}

impl AuthState {
    /// RFC 5389 credentials: MD5 key, USERNAME, MESSAGE-INTEGRITY.
    pub fn legacy(credentials: &Credentials, realm: &str, nonce: &[u8]) -> Self {
        Self {
            username: credentials.username.clone(),
            realm: realm.to_owned(),
            nonce: nonce.to_vec(),
            key: LongTermKey::derive(PasswordAlgorithm::Md5, &credentials.username, realm, &credentials.password),
            algorithms: None,
            userhash: false,
        }
    }

    /// Answers a 401 or 438 that carried `realm`, `nonce` and maybe
    /// PASSWORD-ALGORITHMS (`offered`), as RFC 8489 §9.2.5 says and
    /// `options` allow.
    fn from_challenge(
        credentials: &Credentials,
        options: AuthOptions,
        realm: &str,
        nonce: &[u8],
        offered: Option<&[u8]>,
    ) -> Result<Self, TurnError> {
        let features = SecurityFeatures::of(nonce);
        if options.mode == AuthMode::Legacy {
            return Ok(Self::legacy(credentials, realm, nonce));
        }
        let Some(offered) = offered else {
            if features.password_algorithms {
                // §9.2.5: someone removed the list to force MD5.
                return Err(TurnError::Invalid(
                    "the nonce announces password algorithms but PASSWORD-ALGORITHMS is missing: the challenge was \
                     tampered with"
                        .into(),
                ));
            }
            return match (options.mode, options.userhash) {
                (AuthMode::Sha256, _) => Err(TurnError::Unsupported(
                    "the server does not offer SHA-256 (no PASSWORD-ALGORITHMS: an RFC 5389 server); use \
                     --password-algorithm md5",
                )),
                (_, true) => Err(TurnError::Unsupported(
                    "the server does not speak RFC 8489 (no PASSWORD-ALGORITHMS), so it cannot read USERHASH",
                )),
                _ => Ok(Self::legacy(credentials, realm, nonce)),
            };
        };
        let numbers = password_algorithm_numbers(offered)
            .ok_or_else(|| TurnError::Invalid("PASSWORD-ALGORITHMS malformed".into()))?;
        let sha256 = numbers.contains(&PasswordAlgorithm::Sha256.number());
        let algorithm = match (sha256, options.mode) {
            (true, _) => PasswordAlgorithm::Sha256,
            (false, AuthMode::Sha256) => {
                return Err(TurnError::Unsupported("the server's PASSWORD-ALGORITHMS does not list SHA-256"));
            }
            (false, _) if numbers.contains(&PasswordAlgorithm::Md5.number()) => PasswordAlgorithm::Md5,
            (false, _) => return Err(TurnError::Unsupported("the server offers no password algorithm tern knows")),
        };
        Ok(Self {
            username: credentials.username.clone(),
            realm: realm.to_owned(),
            nonce: nonce.to_vec(),
            key: LongTermKey::derive(algorithm, &credentials.username, realm, &credentials.password),
            algorithms: Some(offered.to_vec()),
            userhash: options.userhash || features.username_anonymity,
        })
    }

    /// Adds USERNAME or USERHASH, REALM, NONCE, for RFC 8489 the password
    /// algorithms, and MESSAGE-INTEGRITY-SHA256 (RFC 8489) or
    /// MESSAGE-INTEGRITY (RFC 5389) to a request.
    pub fn sign(&self, w: &mut MessageWriter<'_>) {
        if self.userhash {
            w.attr(AttrType::USERHASH, &userhash(&self.username, &self.realm));
        } else {
            w.attr(AttrType::USERNAME, self.username.as_bytes());
        }
        w.attr(AttrType::REALM, self.realm.as_bytes()).attr(AttrType::NONCE, &self.nonce);
        match &self.algorithms {
            Some(algorithms) => {
                let algorithm = match self.key {
                    LongTermKey::Md5(_) => PasswordAlgorithm::Md5,
                    LongTermKey::Sha256(_) => PasswordAlgorithm::Sha256,
                };
                w.attr(AttrType::PASSWORD_ALGORITHMS, algorithms)
                    .attr(AttrType::PASSWORD_ALGORITHM, &algorithm.attribute_value())
                    .message_integrity_sha256(self.key.as_bytes());
            }
            None => {
                w.message_integrity(self.key.as_bytes());
            }
        }
    }

    /// Whether a response carries the integrity the requests use, valid
    /// under the key (RFC 8489 §9.2.5).
    pub fn verify(&self, message: &Message<'_>) -> bool {
        match self.algorithms {
            Some(_) => message.verify_integrity_sha256(self.key.as_bytes()),
            None => message.verify_integrity(self.key.as_bytes()),
        }
    }

    /// How requests are signed, for people.
    pub fn describe(&self) -> &'static str {
        match (&self.algorithms, self.key, self.userhash) {
            (None, _, _) => "RFC 5389 MD5",
            (Some(_), LongTermKey::Sha256(_), true) => "RFC 8489 SHA-256 USERHASH",
            (Some(_), LongTermKey::Sha256(_), false) => "RFC 8489 SHA-256",
            (Some(_), LongTermKey::Md5(_), true) => "RFC 8489 MD5 USERHASH",
            (Some(_), LongTermKey::Md5(_), false) => "RFC 8489 MD5",
        }
    }
}

/// The algorithm numbers of a PASSWORD-ALGORITHMS value (RFC 8489 §14.11):
/// each a number and a length-prefixed parameter list padded to four
/// bytes. `None` when an entry runs past the end.
fn password_algorithm_numbers(mut value: &[u8]) -> Option<Vec<u16>> {
    let mut numbers = Vec::new();
    while let [a, b, c, d, rest @ ..] = value {
        let params = usize::from(u16::from_be_bytes([*c, *d])).div_ceil(4) * 4;
        numbers.push(u16::from_be_bytes([*a, *b]));
        value = rest.get(params..)?;
    }
    value.is_empty().then_some(numbers)
}

pub struct TurnSession {
    socket: ClientSocket,
    credentials: Credentials,
    options: AuthOptions,
    timeout: Duration,
    auth: Option<AuthState>,
    received: VecDeque<Received>,
    attempts: VecDeque<ConnectionAttempt>,
    buf: Vec<u8>,
}

impl TurnSession {
    pub fn new(socket: ClientSocket, credentials: Credentials, timeout: Duration) -> Self {
        Self {
            socket,
            credentials,
            options: AuthOptions::default(),
            timeout,
            auth: None,
            received: VecDeque::new(),
            attempts: VecDeque::new(),
            buf: Vec::with_capacity(2048),
        }
    }

    /// Authenticates as `options` say instead of the default (SHA-256 when
    /// offered, USERNAME).
    pub fn with_auth(mut self, options: AuthOptions) -> Self {
        self.options = options;
        self
    }

    pub fn socket(&self) -> &ClientSocket {
        &self.socket
    }

    /// The socket and, once authenticated, what signs further requests.
    pub fn into_parts(self) -> (ClientSocket, Option<AuthState>) {
        (self.socket, self.auth)
    }

    /// The realm the server announced, once it has.
    pub fn realm(&self) -> Option<&str> {
        self.auth.as_ref().map(|auth| auth.realm.as_str())
    }

    /// What signs requests, once the server has challenged; a data
    /// connection's ConnectionBind is signed the same way (RFC 6062 §4.4).
    pub fn auth(&self) -> Option<&AuthState> {
        self.auth.as_ref()
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
        let mut frame = Vec::with_capacity(data.len() + indication::MAX_HEADER_LEN + indication::MAX_PADDING);
        indication::append(&mut frame, indication::Kind::Send, &peer, TransactionId::random(), data)
            .ok_or_else(|| TurnError::Invalid("data over 64 KiB".into()))?;
        self.socket.send(&frame)?;
        Ok(())
    }

    /// ChannelData (RFC 8656 §12.4), padded on stream transports.
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> Result<(), TurnError> {
        let number = channel_data::ChannelNumber::new_rfc5766(channel)
            .ok_or_else(|| TurnError::Invalid(format!("channel {channel:#06x} outside 0x4000-0x7FFF")))?;
        let mut frame = Vec::with_capacity(channel_data::HEADER_LEN + data.len() + channel_data::MAX_PADDING);
        channel_data::append(&mut frame, number, data, self.socket.transport().is_stream())
            .ok_or_else(|| TurnError::Invalid("data over 64 KiB".into()))?;
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
            if let Some(auth) = &self.auth {
                auth.sign(&mut w);
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
            // RFC 8489 §9.2.5: every response to a signed request must carry
            // valid integrity, except 401 and 438, which cannot.
            let signed = message.has_integrity() || message.has_integrity_sha256();
            let authentic = self.auth.as_ref().is_none_or(|auth| auth.verify(&message));
            if message.class() == Class::Success {
                return if authentic { Ok(response) } else { Err(TurnError::Integrity) };
            }
            if signed && !authentic {
                return Err(TurnError::Integrity);
            }
            let error = message
                .attribute(AttrType::ERROR_CODE)
                .map(attr::read_error_code)
                .ok_or_else(|| TurnError::Invalid("error response without ERROR-CODE".into()))?
                .map_err(|e| TurnError::Invalid(e.to_string()))?;
            if error.code == ErrorCode::TRY_ALTERNATE.0 {
                // RFC 8489 §10: a redirect to a signed request must be signed
                // too, or anyone could send the client elsewhere.
                if !authentic {
                    return Err(TurnError::Integrity);
                }
                let alternate = message
                    .attribute(AttrType::ALTERNATE_SERVER)
                    .ok_or_else(|| TurnError::Invalid("300 without ALTERNATE-SERVER".into()))
                    .and_then(|v| attr::read_address(v).map_err(|e| TurnError::Invalid(e.to_string())))?;
                return Err(TurnError::TryAlternate(alternate));
            }
            let challenged = error.code == ErrorCode::UNAUTHENTICATED.0 && self.auth.is_none();
            let stale = error.code == ErrorCode::STALE_NONCE.0;
            if !(challenged || stale) {
                return Err(TurnError::Rejected { code: error.code, reason: error.reason.to_owned() });
            }
            let realm = message.attribute(AttrType::REALM).and_then(|r| std::str::from_utf8(r).ok());
            let nonce = message.attribute(AttrType::NONCE);
            let (Some(realm), Some(nonce)) = (realm, nonce) else {
                return Err(TurnError::Invalid(format!("{} without REALM and NONCE", error.code)));
            };
            let offered = message.attribute(AttrType::PASSWORD_ALGORITHMS);
            self.auth = Some(AuthState::from_challenge(&self.credentials, self.options, realm, nonce, offered)?);
        }
        Err(TurnError::Rejected { code: ErrorCode::UNAUTHENTICATED.0, reason: "credentials refused".into() })
    }
}

/// An Allocate without credentials, as any stranger on the Internet can
/// send, and what came back: a server with authentication answers 401 with
/// REALM and NONCE (RFC 8656 §7.2, RFC 8489 §9.2.4); one that relays for
/// anyone allocates. Returns the request's size and the response's bytes.
pub fn stranger_allocate(socket: &mut ClientSocket, timeout: Duration) -> Result<(usize, Vec<u8>), TurnError> {
    let mut request = Vec::with_capacity(32);
    let mut w =
        MessageWriter::new(&mut request, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &[PROTOCOL_UDP, 0, 0, 0]);
    let mut response = Vec::new();
    socket.transact(&request, timeout, &mut response, |_| {})?;
    Ok((request.len(), response))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::proto::auth::{Authenticator, Integrity, OFFERED_ALGORITHMS, StaticCredentials, UserKeys};

    const REALM: &str = "example.org";
    const NOW: u64 = 1_800_000_000;
    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn alice() -> Credentials {
        Credentials { username: "alice".into(), password: "secret".into() }
    }

    fn server(secrets: Vec<Vec<u8>>) -> Authenticator {
        let users = HashMap::from([("alice".to_owned(), UserKeys::from_password("alice", REALM, "secret"))]);
        Authenticator::new(REALM.into(), StaticCredentials::new(REALM, users, secrets), [9; 32], 600)
    }

    fn options(mode: AuthMode, userhash: bool) -> AuthOptions {
        AuthOptions { mode, userhash }
    }

    #[test]
    fn security_features_are_read_in_either_bit_order() {
        let of = |nonce: &[u8]| {
            let f = SecurityFeatures::of(nonce);
            (f.password_algorithms, f.username_anonymity)
        };
        assert_eq!(of(b"obMatJos2AAADxyz"), (true, true), "tern's order, bit 0 least significant");
        assert_eq!(of(b"obMatJos2wAAAxyz"), (true, true), "bit 0 most significant");
        assert_eq!(of(b"obMatJos2AAABxyz"), (true, false));
        assert_eq!(of(b"obMatJos2AAAC"), (false, true));
        assert_eq!(of(b"coturn-style-nonce"), (false, false));
        assert_eq!(of(b"obMatJos2!!!!"), (false, false));
    }

    #[test]
    fn password_algorithms_are_read_with_their_parameters() {
        assert_eq!(password_algorithm_numbers(&OFFERED_ALGORITHMS), Some(vec![2, 1]));
        assert_eq!(password_algorithm_numbers(&[0, 3, 0, 2, 9, 9, 0, 0, 0, 1, 0, 0]), Some(vec![3, 1]));
        assert_eq!(password_algorithm_numbers(&[0, 3, 0, 8, 9, 9, 0, 0]), None);
        assert_eq!(password_algorithm_numbers(&[0, 1, 0]), None);
    }

    #[test]
    fn a_challenge_is_answered_as_the_options_and_the_server_allow() {
        let nonce = server(vec![]).nonce(IP, NOW);
        let modern =
            AuthState::from_challenge(&alice(), AuthOptions::default(), REALM, &nonce, Some(&OFFERED_ALGORITHMS))
                .expect("answerable");
        assert!(matches!(modern.key, LongTermKey::Sha256(_)));
        assert_eq!(modern.algorithms.as_deref(), Some(&OFFERED_ALGORITHMS[..]));
        assert!(modern.userhash, "RFC 8489 §9.2.5: the anonymity bit asks for USERHASH");
        let legacy = AuthState::from_challenge(
            &alice(),
            options(AuthMode::Legacy, false),
            REALM,
            &nonce,
            Some(&OFFERED_ALGORITHMS),
        )
        .expect("answerable");
        assert!(matches!(legacy.key, LongTermKey::Md5(_)) && legacy.algorithms.is_none() && !legacy.userhash);
        // An RFC 5389 server: no list, no cookie.
        let old = AuthState::from_challenge(&alice(), AuthOptions::default(), REALM, b"plain-nonce", None)
            .expect("answerable");
        assert_eq!(old.describe(), "RFC 5389 MD5");
        for (mode, userhash) in [(AuthMode::Sha256, false), (AuthMode::Auto, true)] {
            let error = AuthState::from_challenge(&alice(), options(mode, userhash), REALM, b"plain-nonce", None);
            assert!(matches!(error, Err(TurnError::Unsupported(_))), "{mode:?} {userhash}");
        }
        // The cookie says the list was sent, but it is gone: a bid-down.
        let stripped = AuthState::from_challenge(&alice(), AuthOptions::default(), REALM, &nonce, None);
        assert!(matches!(stripped, Err(TurnError::Invalid(_))));
        // MD5 alone on the list: fine unless SHA-256 is required.
        let md5_only: &[u8] = &[0, 1, 0, 0];
        let state = AuthState::from_challenge(&alice(), AuthOptions::default(), REALM, b"x", Some(md5_only))
            .expect("answerable");
        assert_eq!(state.describe(), "RFC 8489 MD5");
        let required =
            AuthState::from_challenge(&alice(), options(AuthMode::Sha256, false), REALM, b"x", Some(md5_only));
        assert!(matches!(required, Err(TurnError::Unsupported(_))));
    }

    #[test]
    fn tern_accepts_what_the_client_signs_in_every_mode() {
        for secrets in [vec![], vec![b"rest".to_vec()]] {
            let auth = server(secrets);
            let nonce = auth.nonce(IP, NOW);
            for (mode, userhash, integrity, described) in [
                (AuthMode::Auto, false, Integrity::Sha256, None),
                (AuthMode::Sha256, true, Integrity::Sha256, Some("RFC 8489 SHA-256 USERHASH")),
                (AuthMode::Legacy, false, Integrity::Sha1, Some("RFC 5389 MD5")),
            ] {
                let state = AuthState::from_challenge(
                    &alice(),
                    options(mode, userhash),
                    REALM,
                    &nonce,
                    Some(&OFFERED_ALGORITHMS),
                )
                .expect("answerable");
                if let Some(described) = described {
                    assert_eq!(state.describe(), described);
                }
                let mut request = Vec::new();
                let mut w = MessageWriter::new(
                    &mut request,
                    MessageType::new(Method::ALLOCATE, Class::Request),
                    TransactionId::random(),
                );
                state.sign(&mut w);
                w.finish();
                let message = Message::parse(&request).expect("well-formed");
                let authenticated = auth.authenticate(&message, IP, NOW, &mut Default::default()).expect("accepted");
                assert_eq!((&*authenticated.username, authenticated.key.integrity), ("alice", integrity), "{mode:?}");
                assert_eq!(message.attribute(AttrType::USERNAME).is_none(), state.userhash);
                // The answer, signed as tern signs it, verifies.
                let mut answer = Vec::new();
                let mut w = MessageWriter::new(
                    &mut answer,
                    MessageType::new(Method::ALLOCATE, Class::Success),
                    message.transaction_id(),
                );
                authenticated.key.sign(&mut w);
                w.finish();
                assert!(state.verify(&Message::parse(&answer).expect("well-formed")));
            }
        }
    }
}
