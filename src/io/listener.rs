//! Binding the listen sockets: for every listen address, one UDP socket and one
//! TCP listener per worker, and for every TLS listen address and every PROXY
//! protocol address one TCP listener per worker, all with SO_REUSEPORT so the
//! kernel spreads clients across workers by their 5-tuple and keeps each
//! client on one worker.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::proxy::{ProxyListeners, ProxySettings};
use super::sys::sockopt;
use crate::proto::Transport;

/// Pending connections the kernel queues per TCP listener.
const TCP_BACKLOG: i32 = 1024;
/// How often a port-0 listen address is retried when the UDP port the kernel
/// picked is taken for TCP.
const EPHEMERAL_ATTEMPTS: usize = 32;

/// One worker's share of the listen sockets.
pub struct WorkerListeners {
    pub udp: Vec<(mio::net::UdpSocket, SocketAddr)>,
    pub tcp: Vec<(mio::net::TcpListener, SocketAddr)>,
    pub tls: Vec<(mio::net::TcpListener, SocketAddr)>,
    /// Which of `tcp` and `tls` speak the PROXY protocol (they come last
    /// in each), when any do.
    pub proxy: Option<ProxyListeners>,
}

/// A listen socket failed to bind; names what and where.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {transport} {addr}: {source}")]
pub struct BindError {
    pub transport: Transport,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds `workers` UDP sockets and TCP listeners on each address of `addrs`,
/// `workers` TCP listeners on each address of `tls_addrs`, and as many on
/// each PROXY protocol address of `proxy` (TCP or TLS). A port of 0 is
/// resolved once, to one port shared by UDP and TCP and all workers.
/// `buffer` is the SO_RCVBUF and SO_SNDBUF asked for each UDP socket.
pub fn bind_all(
    addrs: &[SocketAddr],
    tls_addrs: &[SocketAddr],
    proxy: Option<&ProxySettings>,
    workers: usize,
    buffer: usize,
) -> Result<Vec<WorkerListeners>, BindError> {
    let mut per_worker: Vec<WorkerListeners> = (0..workers)
        .map(|_| WorkerListeners { udp: Vec::new(), tcp: Vec::new(), tls: Vec::new(), proxy: None })
        .collect();
    for &addr in addrs {
        let (udp, tcp) = bind_address(addr, workers, buffer)?;
        for (worker, (udp, tcp)) in per_worker.iter_mut().zip(udp.into_iter().zip(tcp)) {
            worker.udp.push(udp);
            worker.tcp.push(tcp);
        }
    }
    for &addr in tls_addrs {
        bind_stream_only(Transport::Tls, addr, &mut per_worker)?;
    }
    if let Some(settings) = proxy {
        let tcp = settings.listen.iter().map(|addr| (Transport::Tcp, *addr));
        let mut bound = Vec::new();
        for (transport, addr) in tcp.chain(settings.tls_listen.iter().map(|addr| (Transport::Tls, *addr))) {
            bound.push((transport, bind_stream_only(transport, addr, &mut per_worker)?));
        }
        let listeners = ProxyListeners::new(settings, bound);
        for worker in &mut per_worker {
            worker.proxy = Some(listeners.clone());
        }
    }
    Ok(per_worker)
}

/// Binds a TCP listener on `addr` for each worker, into its TLS or its TCP
/// listeners as `transport` says, with no UDP socket beside it; returns the
/// address with its port resolved.
fn bind_stream_only(
    transport: Transport,
    addr: SocketAddr,
    per_worker: &mut [WorkerListeners],
) -> Result<SocketAddr, BindError> {
    let resolved = claim_tcp(addr).map_err(|e| BindError { transport, addr, source: in_use(e) })?;
    for worker in per_worker {
        let listener = tcp_listener(resolved).map_err(|source| BindError { transport, addr: resolved, source })?;
        let listeners = if transport == Transport::Tls { &mut worker.tls } else { &mut worker.tcp };
        listeners.push((mio::net::TcpListener::from_std(listener), resolved));
    }
    Ok(resolved)
}

/// Like [`claim`], for a TCP-only (TLS or PROXY) address: binds without SO_REUSEPORT,
/// so an address anybody listens on (a plain TCP listener of ours included)
/// is refused, and resolves port 0.
fn claim_tcp(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // Listening makes the kernel count the port as taken for a bind of port 0
    // by the next listener too; it is closed right after.
    socket.listen(1)?;
    socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("bound socket has no IP address"))
}

/// Adds a hint to "address in use".
fn in_use(source: io::Error) -> io::Error {
    if source.kind() == io::ErrorKind::AddrInUse {
        io::Error::new(io::ErrorKind::AddrInUse, format!("{source} (is another tern or another server running there?)"))
    } else {
        source
    }
}

type Bound = (Vec<(mio::net::UdpSocket, SocketAddr)>, Vec<(mio::net::TcpListener, SocketAddr)>);

fn bind_address(addr: SocketAddr, workers: usize, buffer: usize) -> Result<Bound, BindError> {
    let attempts = if addr.port() == 0 { EPHEMERAL_ATTEMPTS } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        match bind_set(addr, workers, buffer) {
            Ok(bound) => return Ok(bound),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("at least one attempt was made"))
}

fn bind_set(addr: SocketAddr, workers: usize, buffer: usize) -> Result<Bound, BindError> {
    let resolved = claim(addr)?;
    let mut udp = Vec::with_capacity(workers);
    let mut tcp = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = udp_socket(resolved, buffer).map_err(|source| BindError {
            transport: Transport::Udp,
            addr: resolved,
            source,
        })?;
        udp.push((mio::net::UdpSocket::from_std(socket), resolved));
    }
    for _ in 0..workers {
        let listener =
            tcp_listener(resolved).map_err(|source| BindError { transport: Transport::Tcp, addr: resolved, source })?;
        tcp.push((mio::net::TcpListener::from_std(listener), resolved));
    }
    Ok((udp, tcp))
}

/// Checks that nobody serves `addr` yet and resolves port 0. SO_REUSEPORT
/// lets sockets of the same user share a port, so a second tern would
/// otherwise start beside a running one and silently take half its
/// clients. Sockets without SO_REUSEPORT cannot share, so binding them
/// fails if anything listens there; they are closed again at once.
fn claim(addr: SocketAddr) -> Result<SocketAddr, BindError> {
    let in_use = |transport, addr, source: io::Error| BindError { transport, addr, source: in_use(source) };
    let udp = std::net::UdpSocket::bind(addr).map_err(|e| in_use(Transport::Udp, addr, e))?;
    let resolved = udp.local_addr().map_err(|e| in_use(Transport::Udp, addr, e))?;
    let tcp = Socket::new(Domain::for_address(resolved), Type::STREAM, Some(Protocol::TCP))
        .and_then(|socket| {
            if resolved.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            // Connections of a previous run in TIME_WAIT must not block a
            // restart; SO_REUSEADDR still refuses a port someone listens on.
            socket.set_reuse_address(true)?;
            socket.bind(&resolved.into())?;
            Ok(socket)
        })
        .map_err(|e| in_use(Transport::Tcp, resolved, e))?;
    drop((udp, tcp));
    Ok(resolved)
}

fn udp_socket(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    size_buffers(&socket, buffer)?;
    if addr.is_ipv6() {
        // Separate sockets serve IPv4 and IPv6, so `0.0.0.0` and `::` can both be listened on.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    sockopt::enable_pktinfo(socket.as_raw_fd(), addr.is_ipv6())?;
    Ok(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    Ok(socket.into())
}

/// Asks for `bytes` of receive and send buffer (0 keeps the kernel's
/// default) and returns the receive buffer the kernel granted, which
/// `net.core.rmem_max` may cap.
pub fn size_buffers(socket: &Socket, bytes: usize) -> io::Result<usize> {
    if bytes > 0 {
        socket.set_recv_buffer_size(bytes)?;
        socket.set_send_buffer_size(bytes)?;
    }
    // Linux reports twice the size it was given: half is its bookkeeping.
    Ok(socket.recv_buffer_size()? / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_resolves_to_one_port_for_all_workers_and_both_transports() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let workers = bind_all(&[addr], &[addr], None, 3, 0).expect("bind");
        let port = workers[0].udp[0].1.port();
        assert_ne!(port, 0);
        for worker in &workers {
            assert_eq!(worker.udp[0].1.port(), port);
            assert_eq!(worker.tcp[0].1.port(), port);
            assert_ne!(worker.tls[0].1.port(), 0);
            assert_ne!(worker.tls[0].1.port(), port);
            assert_eq!(worker.tls[0].1.port(), workers[0].tls[0].1.port());
        }
    }

    #[test]
    fn proxy_addresses_come_last_among_the_stream_listeners() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let settings = ProxySettings {
            listen: vec![addr],
            tls_listen: vec![addr],
            trusted: vec!["127.0.0.3/32".parse().expect("literal")],
            header_timeout: std::time::Duration::from_secs(5),
        };
        let workers = bind_all(&[addr], &[addr], Some(&settings), 2, 0).expect("bind");
        for worker in &workers {
            let (tcp, tls) = (worker.tcp[1].1, worker.tls[1].1);
            assert_eq!((worker.udp.len(), worker.tcp.len(), worker.tls.len()), (1, 2, 2));
            let proxy = worker.proxy.as_ref().expect("PROXY listeners");
            assert_eq!(proxy.listeners(), [(Transport::Tcp, tcp), (Transport::Tls, tls)]);
            assert!(!proxy.speaks(Transport::Tcp, worker.tcp[0].1) && !proxy.speaks(Transport::Tls, worker.tls[0].1));
            assert_eq!(tcp, workers[0].tcp[1].1, "one port for every worker");
            assert_ne!(tcp.port(), worker.tcp[0].1.port());
        }
        assert!(bind_all(&[addr], &[], None, 1, 0).expect("bind")[0].proxy.is_none());
    }
}
