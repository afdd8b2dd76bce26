//! The server: what tern answers to each packet from a client (RFC 8489 §6.3,
//! RFC 3489 §8 when classic STUN is enabled).
//!
//! `handle_client` takes one datagram or stream frame and appends any answer to
//! the caller's buffer. Malformed packets, responses and indications that need
//! no answer are dropped and counted, never answered: a packet that cannot be
//! parsed gets nothing back, so junk cannot be reflected.

use tracing::{debug, trace};

use crate::proto::FiveTuple;
use crate::proto::demux::{self, PacketKind};
use crate::proto::error::ParseError;
use crate::proto::stun::{AttrType, Class, ErrorCode, Message, MessageType, MessageWriter, Method};

/// The most unknown attributes listed in one 420 response; more are not
/// listed, which keeps the answer no larger than the request.
const MAX_UNKNOWN_LISTED: usize = 8;

/// Behaviour of the STUN service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// SOFTWARE attribute in responses; none by default so answers stay small.
    pub software: Option<String>,
    /// Answer RFC 3489 requests (no magic cookie) with MAPPED-ADDRESS.
    pub rfc3489: bool,
    /// Put reason phrases in ERROR-CODE; off by default so answers stay small.
    pub reason_phrases: bool,
}

/// Counters kept by one server; the driver sums them across workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// STUN requests received and parsed.
    pub requests: u64,
    /// Binding success responses sent.
    pub binding_responses: u64,
    /// Error responses sent, all codes.
    pub error_responses: u64,
    /// Indications received (Binding indications are keep-alives).
    pub indications: u64,
    /// Packets that were not well-formed STUN or ChannelData.
    pub malformed: u64,
    /// Messages whose FINGERPRINT did not match.
    pub bad_fingerprint: u64,
    /// Success or error responses sent to us, which a server ignores.
    pub unexpected_responses: u64,
}

impl Stats {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.binding_responses += other.binding_responses;
        self.error_responses += other.error_responses;
        self.indications += other.indications;
        self.malformed += other.malformed;
        self.bad_fingerprint += other.bad_fingerprint;
        self.unexpected_responses += other.unexpected_responses;
    }
}

/// What the driver must do after `handle_client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOutcome {
    /// Nothing to send.
    Dropped,
    /// A response was appended to the reply buffer; send it to the client.
    Replied,
}

/// One worker's STUN/TURN server state.
pub struct Server {
    config: ServerConfig,
    stats: Stats,
}

impl Server {
    pub fn new(config: ServerConfig) -> Self {
        Self { config, stats: Stats::default() }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Handles one packet from a client: a datagram, or one frame cut from a
    /// stream by [`demux::stream_frame_len`]. Any response is appended to
    /// `reply`.
    pub fn handle_client(&mut self, tuple: &FiveTuple, packet: &[u8], reply: &mut Vec<u8>) -> ClientOutcome {
        match demux::classify(packet) {
            PacketKind::Stun => self.handle_stun(tuple, packet, reply),
            PacketKind::ChannelData | PacketKind::Other => self.drop_malformed(tuple, ParseError::NotStun),
        }
    }

    fn handle_stun(&mut self, tuple: &FiveTuple, packet: &[u8], reply: &mut Vec<u8>) -> ClientOutcome {
        let message = match Message::parse(packet) {
            Ok(message) => message,
            Err(ParseError::NoMagicCookie) if self.config.rfc3489 => match Message::parse_rfc3489(packet) {
                Ok(message) => return self.handle_rfc3489(tuple, &message, reply),
                Err(error) => return self.drop_malformed(tuple, error),
            },
            Err(error) => return self.drop_malformed(tuple, error),
        };
        if message.has_fingerprint() && !message.verify_fingerprint() {
            self.stats.bad_fingerprint += 1;
            trace!(client = %tuple.client, "dropped: FINGERPRINT mismatch");
            return ClientOutcome::Dropped;
        }
        match message.class() {
            Class::Request => {
                self.stats.requests += 1;
                self.handle_request(tuple, &message, reply)
            }
            Class::Indication => {
                self.stats.indications += 1;
                ClientOutcome::Dropped
            }
            Class::Success | Class::Error => {
                self.stats.unexpected_responses += 1;
                ClientOutcome::Dropped
            }
        }
    }

    fn handle_request(&mut self, tuple: &FiveTuple, request: &Message<'_>, reply: &mut Vec<u8>) -> ClientOutcome {
        let mut unknown = [AttrType(0); MAX_UNKNOWN_LISTED];
        let mut unknown_count = 0;
        for (slot, typ) in unknown.iter_mut().zip(request.unknown_required()) {
            *slot = typ;
            unknown_count += 1;
        }
        if unknown_count > 0 {
            debug!(client = %tuple.client, method = request.method().name(), "420: unknown comprehension-required attributes");
            return self.error_response(request, ErrorCode::UNKNOWN_ATTRIBUTE, reply, |w| {
                w.unknown_attributes(&unknown[..unknown_count]);
            });
        }
        match request.method() {
            Method::BINDING => self.binding_success(tuple, request, reply),
            method => {
                debug!(client = %tuple.client, method = method.0, "400: method not supported");
                self.error_response(request, ErrorCode::BAD_REQUEST, reply, |_| {})
            }
        }
    }

    /// RFC 8489 §6.3.1: XOR-MAPPED-ADDRESS is the source of the request as
    /// tern saw it.
    fn binding_success(&mut self, tuple: &FiveTuple, request: &Message<'_>, reply: &mut Vec<u8>) -> ClientOutcome {
        let mut w =
            MessageWriter::new(reply, MessageType::new(Method::BINDING, Class::Success), request.transaction_id());
        w.xor_address(AttrType::XOR_MAPPED_ADDRESS, &tuple.client);
        self.finish_response(&mut w, request);
        self.stats.binding_responses += 1;
        trace!(client = %tuple.client, transport = %tuple.transport, "binding success");
        ClientOutcome::Replied
    }

    /// RFC 3489 §11.2: MAPPED-ADDRESS and SOURCE-ADDRESS, transaction ID echoed
    /// in full (the "cookie" bytes are part of it).
    fn handle_rfc3489(&mut self, tuple: &FiveTuple, request: &Message<'_>, reply: &mut Vec<u8>) -> ClientOutcome {
        if request.class() != Class::Request || request.method() != Method::BINDING {
            return self.drop_malformed(tuple, ParseError::NoMagicCookie);
        }
        self.stats.requests += 1;
        let mut w = MessageWriter::with_header_tail(
            reply,
            MessageType::new(Method::BINDING, Class::Success),
            request.header_tail(),
        );
        w.address(AttrType::MAPPED_ADDRESS, &tuple.client);
        w.address(AttrType::SOURCE_ADDRESS, &tuple.server);
        self.stats.binding_responses += 1;
        trace!(client = %tuple.client, "classic binding success");
        ClientOutcome::Replied
    }

    fn error_response(
        &mut self,
        request: &Message<'_>,
        code: ErrorCode,
        reply: &mut Vec<u8>,
        extra: impl FnOnce(&mut MessageWriter<'_>),
    ) -> ClientOutcome {
        let mut w =
            MessageWriter::new(reply, MessageType::new(request.method(), Class::Error), request.transaction_id());
        w.error_code(code, self.config.reason_phrases.then(|| code.reason()));
        extra(&mut w);
        self.finish_response(&mut w, request);
        self.stats.error_responses += 1;
        ClientOutcome::Replied
    }

    /// SOFTWARE when configured, and FINGERPRINT when the request had one
    /// (RFC 8489 §7.3.1.1 asks a response to mirror the request's use of it).
    fn finish_response(&self, w: &mut MessageWriter<'_>, request: &Message<'_>) {
        if let Some(software) = &self.config.software {
            w.attr(AttrType::SOFTWARE, software.as_bytes());
        }
        if request.has_fingerprint() {
            w.fingerprint();
        }
    }

    fn drop_malformed(&mut self, tuple: &FiveTuple, error: ParseError) -> ClientOutcome {
        self.stats.malformed += 1;
        trace!(client = %tuple.client, %error, "dropped malformed packet");
        ClientOutcome::Dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Transport;
    use crate::proto::stun::TransactionId;
    use crate::proto::stun::attr;

    fn tuple() -> FiveTuple {
        FiveTuple {
            client: "192.0.2.7:40000".parse().expect("literal"),
            server: "198.51.100.1:3478".parse().expect("literal"),
            transport: Transport::Udp,
        }
    }

    fn request(method: Method, build: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), TransactionId([9; 12]));
        build(&mut w);
        buf
    }

    #[test]
    fn binding_request_gets_xor_mapped_address() {
        let mut server = Server::new(ServerConfig::default());
        let mut reply = Vec::new();
        let outcome = server.handle_client(&tuple(), &request(Method::BINDING, |_| {}), &mut reply);
        assert_eq!(outcome, ClientOutcome::Replied);
        let response = Message::parse(&reply).expect("well-formed response");
        assert_eq!(response.message_type(), MessageType::new(Method::BINDING, Class::Success));
        assert_eq!(response.transaction_id(), TransactionId([9; 12]));
        let mapped = response.attribute(AttrType::XOR_MAPPED_ADDRESS).expect("present");
        assert_eq!(attr::read_xor_address(mapped, &response.transaction_id()), Ok(tuple().client));
        assert!(!response.has_fingerprint());
    }

    #[test]
    fn fingerprint_in_request_means_fingerprint_in_response() {
        let mut server = Server::new(ServerConfig::default());
        let mut reply = Vec::new();
        let packet = request(Method::BINDING, |w| {
            w.fingerprint();
        });
        server.handle_client(&tuple(), &packet, &mut reply);
        let response = Message::parse(&reply).expect("well-formed response");
        assert!(response.verify_fingerprint());
    }

    #[test]
    fn bad_fingerprint_is_dropped() {
        let mut server = Server::new(ServerConfig::default());
        let mut packet = request(Method::BINDING, |w| {
            w.fingerprint();
        });
        let last = packet.len() - 1;
        packet[last] ^= 1;
        let mut reply = Vec::new();
        assert_eq!(server.handle_client(&tuple(), &packet, &mut reply), ClientOutcome::Dropped);
        assert!(reply.is_empty());
        assert_eq!(server.stats().bad_fingerprint, 1);
    }

    #[test]
    fn unknown_required_attribute_gets_420_listing_it() {
        let mut server = Server::new(ServerConfig::default());
        let mut reply = Vec::new();
        let packet = request(Method::BINDING, |w| {
            w.attr(AttrType(0x7F01), b"x");
            w.attr(AttrType(0xC0DE), b"optional is fine");
        });
        server.handle_client(&tuple(), &packet, &mut reply);
        let response = Message::parse(&reply).expect("well-formed response");
        assert_eq!(response.class(), Class::Error);
        let code = attr::read_error_code(response.attribute(AttrType::ERROR_CODE).expect("present"));
        assert_eq!(code.map(|c| c.code), Ok(420));
        let listed: Vec<_> =
            attr::read_unknown_attributes(response.attribute(AttrType::UNKNOWN_ATTRIBUTES).expect("present"))
                .expect("even length")
                .collect();
        assert_eq!(listed, [AttrType(0x7F01)]);
    }

    #[test]
    fn indications_and_responses_get_no_answer() {
        let mut server = Server::new(ServerConfig::default());
        let mut reply = Vec::new();
        let mut buf = Vec::new();
        MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Indication), TransactionId([1; 12]));
        assert_eq!(server.handle_client(&tuple(), &buf, &mut reply), ClientOutcome::Dropped);
        buf.clear();
        MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Success), TransactionId([1; 12]));
        assert_eq!(server.handle_client(&tuple(), &buf, &mut reply), ClientOutcome::Dropped);
        assert!(reply.is_empty());
        assert_eq!((server.stats().indications, server.stats().unexpected_responses), (1, 1));
    }

    #[test]
    fn rfc3489_request_is_answered_only_when_enabled() {
        let mut packet = request(Method::BINDING, |_| {});
        packet[4..8].copy_from_slice(&[1, 2, 3, 4]);
        let mut reply = Vec::new();
        let mut strict = Server::new(ServerConfig::default());
        assert_eq!(strict.handle_client(&tuple(), &packet, &mut reply), ClientOutcome::Dropped);

        let mut classic = Server::new(ServerConfig { rfc3489: true, ..ServerConfig::default() });
        assert_eq!(classic.handle_client(&tuple(), &packet, &mut reply), ClientOutcome::Replied);
        let response = Message::parse_rfc3489(&reply).expect("well-formed response");
        assert_eq!(&reply[4..20], &packet[4..20]);
        let mapped = response.attribute(AttrType::MAPPED_ADDRESS).expect("present");
        assert_eq!(attr::read_address(mapped), Ok(tuple().client));
    }

    #[test]
    fn malformed_packets_are_dropped_and_counted() {
        let mut server = Server::new(ServerConfig::default());
        let mut reply = Vec::new();
        let good = request(Method::BINDING, |_| {});
        for packet in [&good[..10], &[0xFFu8; 20][..], &[][..]] {
            assert_eq!(server.handle_client(&tuple(), packet, &mut reply), ClientOutcome::Dropped);
        }
        assert!(reply.is_empty());
        assert_eq!(server.stats().malformed, 3);
    }

    #[test]
    fn unknown_method_gets_400() {
        let mut server = Server::new(ServerConfig::default());
        let mut reply = Vec::new();
        server.handle_client(&tuple(), &request(Method(0x0FF), |_| {}), &mut reply);
        let response = Message::parse(&reply).expect("well-formed response");
        let code = attr::read_error_code(response.attribute(AttrType::ERROR_CODE).expect("present"));
        assert_eq!(code.map(|c| c.code), Ok(400));
        assert_eq!(response.method(), Method(0x0FF));
    }
}
