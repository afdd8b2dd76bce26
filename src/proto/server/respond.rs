//! Writing responses (RFC 8489 §6.3, §9.2.4): what every answer carries
//! (SOFTWARE when configured, the request's kind of integrity with its key
//! when it was authenticated, FINGERPRINT when the request had one), and
//! what each refusal adds to its ERROR-CODE: UNKNOWN-ATTRIBUTES for a 420,
//! ALTERNATE-SERVER for a 300, REALM, NONCE and PASSWORD-ALGORITHMS for a
//! 401 or 438.
//!
//! These are functions of the configuration and the counters rather than
//! methods, so an answer can be written into the server's outbox while
//! the outbox is borrowed.

use tracing::debug;

use super::config::ServerConfig;
use super::error::RequestError;
use super::stats::Stats;
use crate::proto::auth::{AuthError, SigningKey};
use crate::proto::stun::{
    ATTR_HEADER_LEN, AttrType, Class, ErrorCode, Message, MessageType, MessageWriter, Method, TransactionId,
};
use crate::proto::{FiveTuple, Now, Transport};

/// What an answer owes its request, kept for answers written later (an
/// Allocate once its relay is open, a Connect once its peer answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reply {
    pub method: Method,
    pub tid: TransactionId,
    /// Signs the answer; `None` when the request was not authenticated.
    pub key: Option<SigningKey>,
    /// The request had a FINGERPRINT, so the answer gets one (§7.3.1.1).
    pub fingerprint: bool,
}

impl Reply {
    pub(super) fn to(request: &Message<'_>, key: Option<SigningKey>) -> Self {
        Self { method: request.method(), tid: request.transaction_id(), key, fingerprint: request.has_fingerprint() }
    }
}

/// Appends a success response with `attributes`.
pub(super) fn success(
    config: &ServerConfig,
    out: &mut Vec<u8>,
    reply: &Reply,
    attributes: impl FnOnce(&mut MessageWriter<'_>),
) {
    let mut w = MessageWriter::new(out, MessageType::new(reply.method, Class::Success), reply.tid);
    attributes(&mut w);
    finish(config, &mut w, reply);
}

/// Appends the error response `error` owes: its ERROR-CODE and the
/// attributes that go with it. A refused authentication is never signed:
/// the key is unknown or wrong.
pub(super) fn refusal(
    config: &ServerConfig,
    stats: &mut Stats,
    now: Now,
    tuple: &FiveTuple,
    out: &mut Vec<u8>,
    reply: &Reply,
    error: &RequestError,
) {
    let code = ErrorCode::from(error);
    let mut w = MessageWriter::new(out, MessageType::new(reply.method, Class::Error), reply.tid);
    w.error_code(code, config.reason_phrases.then(|| code.reason()));
    let turn = config.turn.as_ref();
    let mut reply = *reply;
    match error {
        RequestError::UnknownAttributes(list) => {
            w.unknown_attributes(list.as_slice());
        }
        RequestError::UnsupportedAttribute(typ) => {
            w.unknown_attributes(&[AttrType(*typ)]);
        }
        // RFC 8489 §14.15: a plain (not XORed) address; §14.16: the domain
        // a client over TLS checks the alternate's certificate against.
        RequestError::TryAlternate(alternate) => {
            w.address(AttrType::ALTERNATE_SERVER, alternate);
            if let Some(domain) = turn.and_then(|t| t.alternate_domain.as_ref())
                && tuple.transport == Transport::Tls
            {
                w.attr(AttrType::ALTERNATE_DOMAIN, domain.as_bytes());
            }
        }
        RequestError::Unauthenticated(auth_error) => {
            reply.key = None;
            stats.auth_failures += 1;
            if *auth_error != AuthError::Challenge {
                debug!(client = %tuple.client, method = reply.method.name(), error = ?auth_error, "authentication failed");
            }
            if let Some(auth) = turn.and_then(|t| t.auth.as_ref())
                && auth_error.sends_challenge()
            {
                w.attr(AttrType::REALM, auth.realm().as_bytes());
                w.attr(AttrType::NONCE, &auth.nonce(tuple.client.ip(), now.unix));
                w.attr(AttrType::PASSWORD_ALGORITHMS, auth.password_algorithms());
            }
        }
        _ => {}
    }
    finish(config, &mut w, &reply);
    stats.error_responses += 1;
}

/// Bytes [`finish`] appends after the attributes of an unauthenticated
/// response to `request`: SOFTWARE and FINGERPRINT.
pub(super) fn trailer_len(config: &ServerConfig, request: &Message<'_>) -> usize {
    let software = config.software.as_ref().map_or(0, |s| ATTR_HEADER_LEN + ((s.len() + 3) & !3));
    let fingerprint = if request.has_fingerprint() { ATTR_HEADER_LEN + 4 } else { 0 };
    software + fingerprint
}

/// SOFTWARE when configured; the request's kind of integrity
/// (MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256) with its key when it
/// was authenticated (RFC 8489 §9.2.4: every such response is signed);
/// FINGERPRINT when the request had one (§7.3.1.1).
fn finish(config: &ServerConfig, w: &mut MessageWriter<'_>, reply: &Reply) {
    if let Some(software) = &config.software {
        w.attr(AttrType::SOFTWARE, software.as_bytes());
    }
    if let Some(key) = &reply.key {
        key.sign(w);
    }
    if reply.fingerprint {
        w.fingerprint();
    }
}
