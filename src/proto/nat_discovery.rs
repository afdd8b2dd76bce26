//! RFC 5780 NAT behaviour discovery, server side: which of the server's four
//! transport addresses a Binding response leaves from, where it goes, and
//! the attributes that say so (§6.1, §7).
//!
//! The server listens on two IPs (A1, A2) times two ports (P1, P2). A
//! request received on Da:Dp is answered from Da or Ca (the other IP) and Dp
//! or Cp (the other port) as CHANGE-REQUEST asks (§6.1, table 1). This
//! module only decides; the driver owns the four sockets and sends from the
//! one named. It never sees a socket and decides nothing outside Binding.

use std::net::SocketAddr;

use crate::proto::stun::Message;
use crate::proto::stun::attr::{self, AttrType, ChangeRequest};
use crate::proto::{FiveTuple, Transport};

/// A Binding request discovery cannot honour as asked (a 400), and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadDiscoveryRequest(pub &'static str);

/// The primary and alternate transport addresses, A1:P1 and A2:P2. The two
/// others, A1:P2 and A2:P1, follow from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatDiscovery {
    primary: SocketAddr,
    alternate: SocketAddr,
}

/// How a Binding response is sent and what it says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponsePlan {
    /// The address the response leaves from: RESPONSE-ORIGIN (§7.3).
    pub origin: SocketAddr,
    /// Where it goes: the request's source, or its IP at RESPONSE-PORT (§7.5).
    pub destination: SocketAddr,
    /// Ca:Cp, whatever the flags: OTHER-ADDRESS (§7.4).
    pub other: SocketAddr,
    /// The request carried PADDING, so the response must too (§6.1).
    pub padding: bool,
}

impl NatDiscovery {
    /// `None` unless the two addresses differ in IP and in port and share a
    /// family: with fewer than four distinct addresses the usage cannot work
    /// (§6), and the configuration refuses such a setting before this.
    pub fn new(primary: SocketAddr, alternate: SocketAddr) -> Option<Self> {
        let usable = primary.ip() != alternate.ip()
            && primary.port() != alternate.port()
            && primary.is_ipv4() == alternate.is_ipv4()
            && !primary.ip().is_unspecified()
            && !alternate.ip().is_unspecified();
        usable.then_some(Self { primary, alternate })
    }

    pub fn primary(&self) -> SocketAddr {
        self.primary
    }

    pub fn alternate(&self) -> SocketAddr {
        self.alternate
    }

    /// The three addresses besides the primary that the server listens on:
    /// A1:P2, A2:P1, A2:P2.
    pub fn extra_addresses(&self) -> [SocketAddr; 3] {
        let (a1, p1) = (self.primary.ip(), self.primary.port());
        let (a2, p2) = (self.alternate.ip(), self.alternate.port());
        [SocketAddr::new(a1, p2), SocketAddr::new(a2, p1), SocketAddr::new(a2, p2)]
    }

    /// Whether `local` is one of the four addresses, so that requests
    /// arriving there are served with this usage.
    pub fn serves(&self, local: SocketAddr) -> bool {
        self.other_ip(local).is_some() && self.other_port(local).is_some()
    }

    /// The response's origin for a request received on `local` with
    /// `change` (§6.1, table 1); `None` when `local` is not one of the four.
    pub fn origin(&self, local: SocketAddr, change: ChangeRequest) -> Option<SocketAddr> {
        let ip = if change.change_ip { self.other_ip(local)? } else { local.ip() };
        let port = if change.change_port { self.other_port(local)? } else { local.port() };
        self.serves(local).then_some(SocketAddr::new(ip, port))
    }

    /// Decides how to answer a Binding request received on `tuple.server`.
    /// `Ok(None)` when this usage does not apply there (another listen
    /// address). Errors are 400s: a malformed attribute, PADDING with
    /// RESPONSE-PORT (§6.1), or a change of source or destination asked over
    /// a connection, on which an answer can only go back the way the request
    /// came (§3: these tests apply only to UDP).
    pub fn plan(&self, tuple: &FiveTuple, request: &Message<'_>) -> Result<Option<ResponsePlan>, BadDiscoveryRequest> {
        if !self.serves(tuple.server) {
            return Ok(None);
        }
        let change = request
            .attribute(AttrType::CHANGE_REQUEST)
            .map(attr::read_change_request)
            .transpose()
            .map_err(|_| BadDiscoveryRequest("CHANGE-REQUEST malformed"))?
            .unwrap_or_default();
        let response_port = request
            .attribute(AttrType::RESPONSE_PORT)
            .map(attr::read_response_port)
            .transpose()
            .map_err(|_| BadDiscoveryRequest("RESPONSE-PORT malformed"))?;
        let padding = request.attribute(AttrType::PADDING).is_some();
        if padding && response_port.is_some() {
            return Err(BadDiscoveryRequest("PADDING with RESPONSE-PORT"));
        }
        let datagram = tuple.transport == Transport::Udp;
        if !datagram && change.is_change() {
            return Err(BadDiscoveryRequest("CHANGE-REQUEST over a connection"));
        }
        if !datagram && response_port.is_some() {
            return Err(BadDiscoveryRequest("RESPONSE-PORT over a connection"));
        }
        if response_port == Some(0) {
            return Err(BadDiscoveryRequest("RESPONSE-PORT 0"));
        }
        let destination = response_port.map_or(tuple.client, |port| SocketAddr::new(tuple.client.ip(), port));
        let origin = self.origin(tuple.server, change).ok_or(BadDiscoveryRequest("not a discovery address"))?;
        let other = self
            .origin(tuple.server, ChangeRequest { change_ip: true, change_port: true })
            .ok_or(BadDiscoveryRequest("not a discovery address"))?;
        Ok(Some(ResponsePlan { origin, destination, other, padding }))
    }

    fn other_ip(&self, local: SocketAddr) -> Option<std::net::IpAddr> {
        match local.ip() {
            ip if ip == self.primary.ip() => Some(self.alternate.ip()),
            ip if ip == self.alternate.ip() => Some(self.primary.ip()),
            _ => None,
        }
    }

    fn other_port(&self, local: SocketAddr) -> Option<u16> {
        match local.port() {
            port if port == self.primary.port() => Some(self.alternate.port()),
            port if port == self.alternate.port() => Some(self.primary.port()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stun::{Class, MessageType, MessageWriter, Method, TransactionId};

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("literal")
    }

    fn discovery() -> NatDiscovery {
        NatDiscovery::new(addr("192.0.2.1:3478"), addr("192.0.2.2:3479")).expect("usable")
    }

    fn request(build: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), TransactionId::random());
        build(&mut w);
        buf
    }

    fn plan(server: &str, transport: Transport, packet: &[u8]) -> Result<Option<ResponsePlan>, BadDiscoveryRequest> {
        let tuple = FiveTuple { client: addr("198.51.100.7:5000"), server: addr(server), transport };
        discovery().plan(&tuple, &Message::parse(packet).expect("well-formed"))
    }

    #[test]
    fn unusable_pairs_are_refused() {
        assert!(NatDiscovery::new(addr("192.0.2.1:3478"), addr("192.0.2.1:3479")).is_none());
        assert!(NatDiscovery::new(addr("192.0.2.1:3478"), addr("192.0.2.2:3478")).is_none());
        assert!(NatDiscovery::new(addr("192.0.2.1:3478"), addr("[2001:db8::1]:3479")).is_none());
        assert!(NatDiscovery::new(addr("0.0.0.0:3478"), addr("192.0.2.2:3479")).is_none());
    }

    #[test]
    fn origin_follows_table_1_from_each_of_the_four_addresses() {
        let d = discovery();
        let flags = |change_ip, change_port| ChangeRequest { change_ip, change_port };
        for (local, none, ip, port, both) in [
            ("192.0.2.1:3478", "192.0.2.1:3478", "192.0.2.2:3478", "192.0.2.1:3479", "192.0.2.2:3479"),
            ("192.0.2.1:3479", "192.0.2.1:3479", "192.0.2.2:3479", "192.0.2.1:3478", "192.0.2.2:3478"),
            ("192.0.2.2:3478", "192.0.2.2:3478", "192.0.2.1:3478", "192.0.2.2:3479", "192.0.2.1:3479"),
            ("192.0.2.2:3479", "192.0.2.2:3479", "192.0.2.1:3479", "192.0.2.2:3478", "192.0.2.1:3478"),
        ] {
            let local = addr(local);
            assert_eq!(d.origin(local, flags(false, false)), Some(addr(none)), "{local}");
            assert_eq!(d.origin(local, flags(true, false)), Some(addr(ip)), "{local}");
            assert_eq!(d.origin(local, flags(false, true)), Some(addr(port)), "{local}");
            assert_eq!(d.origin(local, flags(true, true)), Some(addr(both)), "{local}");
        }
        assert_eq!(d.origin(addr("192.0.2.3:3478"), flags(false, false)), None);
        assert_eq!(d.origin(addr("192.0.2.1:4000"), flags(false, false)), None);
    }

    #[test]
    fn plan_reads_the_request() {
        let plain = request(|_| {});
        let expected = ResponsePlan {
            origin: addr("192.0.2.1:3478"),
            destination: addr("198.51.100.7:5000"),
            other: addr("192.0.2.2:3479"),
            padding: false,
        };
        assert_eq!(plan("192.0.2.1:3478", Transport::Udp, &plain), Ok(Some(expected)));
        assert_eq!(plan("192.0.2.9:3478", Transport::Udp, &plain), Ok(None));

        let change = request(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &ChangeRequest { change_ip: true, change_port: false }.to_bytes());
            w.attr(AttrType::RESPONSE_PORT, &[0x13, 0x88, 0, 0]);
        });
        let planned = plan("192.0.2.2:3479", Transport::Udp, &change).expect("valid").expect("served");
        assert_eq!(planned.origin, addr("192.0.2.1:3479"));
        assert_eq!(planned.destination, addr("198.51.100.7:5000"));
        assert_eq!(planned.other, addr("192.0.2.1:3478"));
    }

    #[test]
    fn connections_cannot_change_source_or_destination() {
        let change = request(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &ChangeRequest { change_ip: false, change_port: true }.to_bytes());
        });
        assert!(matches!(plan("192.0.2.1:3478", Transport::Tcp, &change), Err(BadDiscoveryRequest(_))));
        let no_change = request(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &ChangeRequest::default().to_bytes());
        });
        assert!(matches!(plan("192.0.2.1:3478", Transport::Tcp, &no_change), Ok(Some(_))));
        let port = request(|w| {
            w.attr(AttrType::RESPONSE_PORT, &[0x13, 0x88, 0, 0]);
        });
        assert!(matches!(plan("192.0.2.1:3478", Transport::Tcp, &port), Err(BadDiscoveryRequest(_))));
    }

    #[test]
    fn bad_values_and_padding_with_response_port_are_400() {
        for packet in [
            request(|w| {
                w.attr(AttrType::CHANGE_REQUEST, &[0, 4]);
            }),
            request(|w| {
                w.attr(AttrType::RESPONSE_PORT, &[0, 0, 0, 0]);
            }),
            request(|w| {
                w.attr(AttrType::PADDING, &[0; 8]);
                w.attr(AttrType::RESPONSE_PORT, &[0x13, 0x88, 0, 0]);
            }),
        ] {
            assert!(matches!(plan("192.0.2.1:3478", Transport::Udp, &packet), Err(BadDiscoveryRequest(_))));
        }
    }
}
