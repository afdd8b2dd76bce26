//! The load generator's built-in peer: UDP sockets on loopback that send
//! every datagram back to where it came from (the relayed address), and count
//! what they received, which is what the relay delivered towards peers.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::io::sys::batch::{BATCH, RecvBatch, SendScratch, Transmit, send_batch};
use crate::io::sys::poll::{PollFd, wait_readable};

/// How often a blocked peer thread looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Echo sockets, one per thread.
pub struct EchoPeer {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoPeer {
    /// Starts `threads` echo sockets sharing the address `bind` (port 0
    /// picks one) with SO_REUSEPORT, so the kernel spreads relays over them.
    pub fn start(bind: SocketAddr, threads: usize) -> io::Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut addr = bind;
        let mut handles = Vec::new();
        for index in 0..threads.max(1) {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            crate::io::size_buffers(&socket, super::relay::SOCKET_BUFFER)?;
            socket.bind(&addr.into())?;
            let socket: UdpSocket = socket.into();
            addr = socket.local_addr()?;
            let (received, stop) = (received.clone(), stop.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("tern-load-peer-{index}"))
                    .spawn(move || echo(&socket, &received, &stop))?,
            );
        }
        Ok(Self { addr, received, stop, threads: handles })
    }

    /// The address the peer sockets share.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn echo(socket: &UdpSocket, received: &AtomicU64, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    let mut batch = RecvBatch::new(65536, 0);
    let mut scratch = SendScratch::default();
    let mut pollfd = PollFd::new(fd);
    while !stop.load(Ordering::Relaxed) {
        let count = match batch.recv(fd) {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Blocks up to STOP_CHECK for the next datagram.
                let _ = wait_readable(&mut pollfd, STOP_CHECK);
                continue;
            }
            Err(_) => continue,
        };
        received.fetch_add(count as u64, Ordering::Relaxed);
        let unused = Transmit::new(SocketAddr::from(([0, 0, 0, 0], 0)), None, &[]);
        let mut transmits = [unused; BATCH];
        for (i, transmit) in transmits.iter_mut().enumerate().take(count) {
            *transmit = Transmit::new(batch.meta(i).source, None, batch.payload(i));
        }
        let mut sent = 0;
        while sent < count {
            match send_batch(fd, &transmits[sent..count], &mut scratch) {
                Ok(n) => sent += n.max(1),
                Err(_) => sent += 1,
            }
        }
    }
}
