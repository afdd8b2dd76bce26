//! The server URLs `tern doctor` takes, spelt as in `iceServers`:
//! `turn:HOST[:PORT][?transport=udp|tcp]` and `turns:HOST[:PORT][?transport=tcp]`
//! (RFC 7065), `stun:HOST[:PORT]` and `stuns:HOST[:PORT]` (RFC 7064), or a
//! bare `HOST[:PORT]`, taken as `turn:`.
//!
//! Without `?transport=` a `turn:` or `stun:` URL is checked over UDP and
//! TCP, the two a deployment on port 3478 usually serves; `?transport=`
//! narrows it to one. `turns:` is TLS over TCP; over UDP it would be DTLS,
//! which tern neither serves nor checks.

use std::fmt;

use crate::client::tls::DEFAULT_TLS_PORT;
use crate::client::{DEFAULT_PORT, split_host_port, strip_scheme};
use crate::proto::Transport;

/// One URL, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    /// As given, for the report.
    pub text: String,
    /// A name or an IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The transports to check, in the order checked.
    pub transports: Vec<Transport>,
    /// A `turn:` or `turns:` URL (or a bare host): allocation is checked too.
    pub turn: bool,
}

/// Why a URL is not one `tern doctor` can check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?}: no host")]
    NoHost(String),
    #[error("{0:?}: {1:?} is not a port number")]
    Port(String, String),
    #[error("{0:?}: transport must be udp or tcp, not {1:?}")]
    Transport(String, String),
    #[error("{0:?}: DTLS (turns: over UDP) is not something tern doctor can check; use ?transport=tcp")]
    Dtls(String),
    #[error("{0:?}: unknown parameter {1:?} (only ?transport= is defined)")]
    Parameter(String, String),
    #[error("{0:?}: unknown scheme; use turn:, turns:, stun: or stuns:")]
    Scheme(String),
}

impl ServerUrl {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let (rest, secure) = strip_scheme(text);
        let turn = rest.len() == text.len() || text.starts_with("turn");
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        if authority.contains("://") || (rest.len() == text.len() && looks_like_scheme(authority)) {
            return Err(UrlError::Scheme(text.to_owned()));
        }
        let (host, port) = split_host_port(authority);
        if host.is_empty() {
            return Err(UrlError::NoHost(text.to_owned()));
        }
        let port = match port {
            Some(port) => port.parse().map_err(|_| UrlError::Port(text.to_owned(), port.to_owned()))?,
            None if secure => DEFAULT_TLS_PORT,
            None => DEFAULT_PORT,
        };
        let mut requested = None;
        for parameter in query.into_iter().flat_map(|q| q.split('&')) {
            match parameter.split_once('=') {
                Some(("transport", "udp")) => requested = Some(Transport::Udp),
                Some(("transport", "tcp")) => requested = Some(Transport::Tcp),
                Some(("transport", other)) => return Err(UrlError::Transport(text.to_owned(), other.to_owned())),
                _ => return Err(UrlError::Parameter(text.to_owned(), parameter.to_owned())),
            }
        }
        let transports = match (secure, requested) {
            (true, Some(Transport::Udp)) => return Err(UrlError::Dtls(text.to_owned())),
            (true, _) => vec![Transport::Tls],
            (false, Some(transport)) => vec![transport],
            (false, None) => vec![Transport::Udp, Transport::Tcp],
        };
        Ok(Self { text: text.to_owned(), host: host.to_owned(), port, transports, turn })
    }

    /// Whether the host is an IP literal, which needs no DNS.
    pub fn host_ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `http:` or `foo:` before anything that is a port: a scheme tern does not know.
fn looks_like_scheme(authority: &str) -> bool {
    match authority.split_once(':') {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme.chars().all(|c| c.is_ascii_alphabetic())
                && !rest.is_empty()
                && !rest.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ServerUrl {
        ServerUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn ice_server_urls_are_read_as_browsers_read_them() {
        let url = parse("turn:turn.example.com");
        assert_eq!((url.host.as_str(), url.port, url.turn), ("turn.example.com", 3478, true));
        assert_eq!(url.transports, [Transport::Udp, Transport::Tcp]);
        assert_eq!(parse("turn:turn.example.com:3479?transport=udp").transports, [Transport::Udp]);
        assert_eq!(parse("turn:turn.example.com?transport=tcp").transports, [Transport::Tcp]);
        let url = parse("turns:turn.example.com?transport=tcp");
        assert_eq!((url.port, url.transports.as_slice()), (5349, &[Transport::Tls][..]));
        assert_eq!(parse("turns:turn.example.com:443").port, 443);
        let url = parse("turn:[2001:db8::1]:3478");
        assert_eq!((url.host.as_str(), url.host_ip().is_some()), ("2001:db8::1", true));
        assert_eq!(parse("turn:2001:db8::1").host, "2001:db8::1");
        let url = parse("stun:stun.example.com");
        assert!(!url.turn);
        assert_eq!(url.transports, [Transport::Udp, Transport::Tcp]);
        assert_eq!(parse("stuns:stun.example.com").transports, [Transport::Tls]);
        let bare = parse("127.0.0.1:3478");
        assert!(bare.turn && bare.host_ip().is_some());
        assert_eq!(parse("turn.example.com").host, "turn.example.com");
    }

    #[test]
    fn urls_that_cannot_be_checked_say_why() {
        assert!(matches!(ServerUrl::parse("turns:example.com?transport=udp"), Err(UrlError::Dtls(_))));
        assert!(matches!(ServerUrl::parse("turn:example.com?transport=sctp"), Err(UrlError::Transport(..))));
        assert!(matches!(ServerUrl::parse("turn:example.com?ttl=3"), Err(UrlError::Parameter(..))));
        assert!(matches!(ServerUrl::parse("turn:example.com:99999"), Err(UrlError::Port(..))));
        assert!(matches!(ServerUrl::parse("turn::3478"), Err(UrlError::NoHost(_))));
        assert!(matches!(ServerUrl::parse("http://example.com"), Err(UrlError::Scheme(_))));
        assert!(matches!(ServerUrl::parse("turnx:example.com"), Err(UrlError::Scheme(_))));
    }
}
