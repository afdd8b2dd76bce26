//! Binding the listen sockets: for every listen address, one UDP socket and one
//! TCP listener per worker, and for every TLS listen address one TCP listener
//! per worker, all with SO_REUSEPORT so the kernel spreads clients across
//! workers by their 5-tuple and keeps each client on one worker.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

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
/// and `workers` TCP listeners on each address of `tls_addrs`. A port of 0
/// is resolved once, to one port shared by UDP and TCP and all workers.
/// `buffer` is the SO_RCVBUF and SO_SNDBUF asked for each UDP socket.
pub fn bind_all(
    addrs: &[SocketAddr],
    tls_addrs: &[SocketAddr],
    workers: usize,
    buffer: usize,
) -> Result<Vec<WorkerListeners>, BindError> {
    let mut per_worker: Vec<WorkerListeners> =
        (0..workers).map(|_| WorkerListeners { udp: Vec::new(), tcp: Vec::new(), tls: Vec::new() }).collect();
    for &addr in addrs {
        let (udp, tcp) = bind_address(addr, workers, buffer)?;
        for (worker, (udp, tcp)) in per_worker.iter_mut().zip(udp.into_iter().zip(tcp)) {
            worker.udp.push(udp);
            worker.tcp.push(tcp);
        }
    }
    for &addr in tls_addrs {
        let bind_error = |source| BindError { transport: Transport::Tls, addr, source };
        let resolved = claim_tcp(addr).map_err(|e| bind_error(in_use(e)))?;
        for worker in &mut per_worker {
            let listener = tcp_listener(resolved).map_err(|source| BindError {
                transport: Transport::Tls,
                addr: resolved,
                source,
            })?;
            worker.tls.push((mio::net::TcpListener::from_std(listener), resolved));
        }
    }
    Ok(per_worker)
}

/// Like [`claim`], for a TCP-only (TLS) address: binds without SO_REUSEPORT,
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
        let workers = bind_all(&[addr], &[addr], 3, 0).expect("bind");
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
}
