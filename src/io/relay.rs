//! One worker's UDP relay sockets, by [`RelayId`]: bound where the core
//! says (it chose the port), with ICMP errors and DONT-FRAGMENT as asked,
//! and registered under their token. Which port, whose quota and when to
//! close are the core's decisions.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use mio::{Interest, Registry};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use super::sys::sockopt;
use super::token::Source;
use crate::proto::allocation::RelayId;
use crate::proto::server::RelayOpenError;

/// One allocation's relay socket.
struct RelaySocket {
    socket: mio::net::UdpSocket,
    addr: SocketAddr,
}

/// The UDP relay sockets of one worker's allocations.
#[derive(Default)]
pub struct UdpRelays {
    sockets: Vec<Option<RelaySocket>>,
}

impl UdpRelays {
    /// Binds and registers the relay socket of `relay` on `addr`.
    pub fn open(
        &mut self,
        registry: &Registry,
        relay: RelayId,
        addr: SocketAddr,
        dont_fragment: bool,
    ) -> Result<(), RelayOpenError> {
        let mut socket = bind(addr, dont_fragment)?;
        if let Err(e) = registry.register(&mut socket, Source::Relay(relay).token(), Interest::READABLE) {
            warn!(%addr, error = %e, "cannot register relay socket");
            return Err(RelayOpenError::Unavailable);
        }
        if self.sockets.len() <= relay.0 {
            self.sockets.resize_with(relay.0 + 1, || None);
        }
        self.sockets[relay.0] = Some(RelaySocket { socket, addr });
        Ok(())
    }

    /// Closes the relay socket of `relay` if it is bound to `addr`; false
    /// when there is none (a TCP relay's listener has the id instead).
    pub fn close(&mut self, registry: &Registry, relay: RelayId, addr: SocketAddr) -> bool {
        let Some(slot) = self.sockets.get_mut(relay.0) else { return false };
        let Some(mut closed) = slot.take_if(|r| r.addr == addr) else { return false };
        let _ = registry.deregister(&mut closed.socket);
        true
    }

    pub fn fd(&self, relay: RelayId) -> Option<RawFd> {
        self.sockets.get(relay.0).and_then(Option::as_ref).map(|r| r.socket.as_raw_fd())
    }
}

fn bind(addr: SocketAddr, dont_fragment: bool) -> Result<mio::net::UdpSocket, RelayOpenError> {
    let failed = |e: io::Error| {
        if e.kind() == io::ErrorKind::AddrInUse {
            debug!(%addr, "relay port in use elsewhere");
            RelayOpenError::AddrInUse
        } else {
            warn!(%addr, error = %e, "cannot open relay socket");
            RelayOpenError::Unavailable
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(failed)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(failed)?;
    }
    socket.set_nonblocking(true).map_err(failed)?;
    // ICMP errors reach the client where the kernel reports them; relaying
    // works without them.
    if let Err(e) = sockopt::enable_recv_err(socket.as_raw_fd(), addr.is_ipv6()) {
        debug!(%addr, error = %e, "no ICMP errors for this relay socket");
    }
    if dont_fragment {
        sockopt::set_dont_fragment(socket.as_raw_fd(), addr.is_ipv6())
            .map_err(|_| RelayOpenError::DontFragmentUnsupported)?;
    }
    socket.bind(&addr.into()).map_err(failed)?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}
