//! Binding (RFC 8489 §6.3.1): XOR-MAPPED-ADDRESS, with RFC 5780 NAT
//! behaviour discovery on the addresses it serves, and classic RFC 3489
//! requests (no magic cookie) when enabled.

use tracing::{debug, trace};

use super::error::RequestError;
use super::respond::{self, Reply};
use super::{ClientOutcome, Server};
use crate::proto::error::ParseError;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{ATTR_HEADER_LEN, Class, ErrorCode, Message, MessageType, MessageWriter, Method};
use crate::proto::{FiveTuple, Now, Transport};

impl Server {
    /// RFC 8489 §6.3.1: XOR-MAPPED-ADDRESS is the source of the request as
    /// tern saw it. With NAT behaviour discovery, RFC 5780 §6.1 adds
    /// MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS, honours
    /// CHANGE-REQUEST and RESPONSE-PORT, and pads the response when asked,
    /// but never beyond the request's own size: the answer must not become
    /// an amplifier.
    pub(super) fn binding_success(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        reply: &mut Vec<u8>,
    ) -> ClientOutcome {
        let answer = Reply::to(request, None);
        let plan = match self.config.nat_discovery.as_ref().map(|d| d.plan(tuple, request)).transpose() {
            Ok(plan) => plan.flatten(),
            Err(error) => {
                debug!(client = %tuple.client, %error, "Binding request refused");
                respond::refusal(&self.config, &mut self.stats, now, tuple, reply, &answer, &error.into());
                return ClientOutcome::Replied;
            }
        };
        let trailer = respond::trailer_len(&self.config, request);
        let request_len = request.as_bytes().len();
        respond::success(&self.config, reply, &answer, |w| {
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, &tuple.client);
            if let Some(plan) = &plan {
                // Both forms, so a client can spot an ALG rewriting addresses (§3.6).
                w.address(AttrType::MAPPED_ADDRESS, &tuple.client);
                w.address(AttrType::RESPONSE_ORIGIN, &plan.origin);
                w.address(AttrType::OTHER_ADDRESS, &plan.other);
                if plan.padding {
                    let room = request_len.saturating_sub(w.len() + ATTR_HEADER_LEN + trailer) & !3;
                    w.attr_with(AttrType::PADDING, room, |out| out.fill(0));
                }
            }
        });
        self.stats.binding_responses += 1;
        trace!(client = %tuple.client, transport = %tuple.transport, "binding success");
        match plan {
            Some(plan) if plan.origin != tuple.server || plan.destination != tuple.client => {
                ClientOutcome::RepliedFrom { source: plan.origin, destination: plan.destination }
            }
            _ => ClientOutcome::Replied,
        }
    }

    /// RFC 3489 §11.2: MAPPED-ADDRESS and SOURCE-ADDRESS, transaction ID echoed
    /// in full (the "cookie" bytes are part of it).
    pub(super) fn handle_rfc3489(
        &mut self,
        tuple: &FiveTuple,
        request: &Message<'_>,
        reply: &mut Vec<u8>,
    ) -> ClientOutcome {
        if request.class() != Class::Request || request.method() != Method::BINDING {
            return self.drop_malformed(tuple, ParseError::NoMagicCookie);
        }
        self.stats.requests += 1;
        // RFC 3489 §11.2.4: the CHANGE-REQUEST RFC 5780 took over, answered
        // from the same addresses. Without discovery on this address (or on
        // a connection) it cannot be honoured, and a classic client takes an
        // answer from the usual address for a NAT that let it through, so
        // it gets an error instead.
        let change = match request.attribute(AttrType::CHANGE_REQUEST).map(attr::read_change_request).transpose() {
            Ok(change) => change.unwrap_or_default(),
            Err(error) => return self.drop_malformed(tuple, error),
        };
        let discovery = self.config.nat_discovery.filter(|d| d.serves(tuple.server));
        let origin = match discovery.and_then(|d| d.origin(tuple.server, change)) {
            Some(origin) if tuple.transport == Transport::Udp || !change.is_change() => origin,
            _ if !change.is_change() => tuple.server,
            _ => {
                let error = match discovery {
                    Some(_) => RequestError::BadRequest("CHANGE-REQUEST cannot be honoured here"),
                    None => RequestError::UnsupportedAttribute(AttrType::CHANGE_REQUEST.0),
                };
                let code = error.code();
                let mut w = MessageWriter::with_header_tail(
                    reply,
                    MessageType::new(Method::BINDING, Class::Error),
                    request.header_tail(),
                );
                w.error_code(code, self.config.reason_phrases.then(|| code.reason()));
                if code == ErrorCode::UNKNOWN_ATTRIBUTE {
                    // RFC 3489 §11.2.10 lists an even number of types,
                    // repeating one when needed.
                    w.unknown_attributes(&[AttrType::CHANGE_REQUEST, AttrType::CHANGE_REQUEST]);
                }
                self.stats.error_responses += 1;
                debug!(client = %tuple.client, code = code.0, "classic CHANGE-REQUEST refused");
                return ClientOutcome::Replied;
            }
        };
        let mut w = MessageWriter::with_header_tail(
            reply,
            MessageType::new(Method::BINDING, Class::Success),
            request.header_tail(),
        );
        w.address(AttrType::MAPPED_ADDRESS, &tuple.client);
        w.address(AttrType::SOURCE_ADDRESS, &origin);
        if let Some(discovery) = discovery
            && let Some(other) =
                discovery.origin(tuple.server, attr::ChangeRequest { change_ip: true, change_port: true })
        {
            w.address(AttrType::CHANGED_ADDRESS, &other);
        }
        self.stats.binding_responses += 1;
        trace!(client = %tuple.client, "classic binding success");
        if origin == tuple.server {
            ClientOutcome::Replied
        } else {
            ClientOutcome::RepliedFrom { source: origin, destination: tuple.client }
        }
    }
}
