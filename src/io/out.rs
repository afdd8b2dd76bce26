//! Datagrams waiting to leave a worker, gathered over one turn of its loop
//! and sent together.
//!
//! Everything a worker sends over UDP (answers, data for peers, data for
//! clients) is copied into one arena as it is produced. At the end of the
//! turn, or when the arena fills, the queue is sorted by socket (stably, so
//! each flow keeps its order) and flushed: one `sendmmsg` per socket per 32
//! datagrams, and a run of datagrams of equal size to the same destination
//! becomes one GSO send, which the kernel carries through its stack as a
//! single packet. A relay socket that received one packet per wake-up (many
//! allocations, each quiet) thus answers through the listener in batches, and
//! a burst for one client costs one trip through the IP stack.
//!
//! Copying costs a memcpy per datagram; a syscall saved pays for hundreds.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use tracing::{trace, warn};

use super::sys::batch::{BATCH, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, SendScratch, Transmit, send_batch};
use crate::proto::allocation::RelayId;

/// Flush before the turn ends once this many datagrams are queued, which
/// bounds the delay added to the first of them.
const FLUSH_ENTRIES: usize = 512;
/// Or once this many bytes are.
const FLUSH_BYTES: usize = 1 << 20;

/// The socket a datagram leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    Listener(usize),
    Relay(RelayId),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    via: Via,
    destination: SocketAddr,
    source_ip: Option<IpAddr>,
    start: usize,
    len: usize,
}

pub struct OutQueue {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// Whether GSO is used; turned off for good if the kernel refuses it.
    gso: bool,
    scratch: SendScratch,
}

/// What a flush did, for the counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flushed {
    pub failures: u64,
}

impl OutQueue {
    pub fn new(gso: bool) -> Self {
        Self {
            bytes: Vec::with_capacity(FLUSH_BYTES + 65536),
            entries: Vec::with_capacity(FLUSH_ENTRIES),
            gso,
            scratch: SendScratch::default(),
        }
    }

    /// The arena, for a producer that writes a datagram in place; follow with
    /// [`Self::push_written`].
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Queues the bytes written to the arena since `start`.
    pub fn push_written(&mut self, via: Via, destination: SocketAddr, source_ip: Option<IpAddr>, start: usize) {
        let len = self.bytes.len() - start;
        self.entries.push(Entry { via, destination, source_ip, start, len });
    }

    /// Queues a copy of `datagram`.
    pub fn push(&mut self, via: Via, destination: SocketAddr, source_ip: Option<IpAddr>, datagram: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.push_written(via, destination, source_ip, start);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the queue should be flushed before the turn ends.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= FLUSH_ENTRIES || self.bytes.len() >= FLUSH_BYTES
    }

    /// Sends everything. `socket` names the descriptor of each [`Via`];
    /// datagrams for a socket that is gone (an allocation deleted during the
    /// turn) are dropped.
    pub fn flush(&mut self, socket: impl Fn(Via) -> Option<RawFd>) -> Flushed {
        let mut flushed = Flushed::default();
        if self.entries.is_empty() {
            return flushed;
        }
        self.entries.sort_by_key(|e| e.via);
        let unused = Transmit::new(SocketAddr::from(([0, 0, 0, 0], 0)), None, &[]);
        let mut transmits = [unused; BATCH];
        let mut index = 0;
        while index < self.entries.len() {
            let via = self.entries[index].via;
            let group_end = index + self.entries[index..].iter().take_while(|e| e.via == via).count();
            let Some(fd) = socket(via) else {
                index = group_end;
                continue;
            };
            let mut count = 0;
            while index < group_end {
                let run = if self.gso { self.gso_run(index, group_end) } else { 1 };
                let first = self.entries[index];
                let last = self.entries[index + run - 1];
                let payload = &self.bytes[first.start..last.start + last.len];
                let segment_size = (run > 1).then_some(first.len as u16);
                transmits[count] =
                    Transmit { destination: first.destination, source_ip: first.source_ip, payload, segment_size };
                count += 1;
                index += run;
                if count == BATCH || index == group_end {
                    flushed.failures += send_all(fd, &transmits[..count], &mut self.scratch, &mut self.gso);
                    count = 0;
                }
            }
        }
        self.entries.clear();
        self.bytes.clear();
        flushed
    }

    /// How many entries from `index` on can go as one GSO send: same
    /// destination and source, contiguous, equal size (the last may be
    /// smaller), within the kernel's limits.
    fn gso_run(&self, index: usize, end: usize) -> usize {
        let first = self.entries[index];
        let mut run = 1;
        let mut total = first.len;
        while index + run < end && run < GSO_MAX_SEGMENTS {
            let previous = self.entries[index + run - 1];
            let next = self.entries[index + run];
            let fits = next.destination == first.destination
                && next.source_ip == first.source_ip
                && next.start == previous.start + previous.len
                && next.len <= first.len
                && next.len > 0
                && total + next.len <= GSO_MAX_BYTES;
            if !fits {
                break;
            }
            run += 1;
            total += next.len;
            if next.len < first.len {
                // Only the last segment may be short.
                break;
            }
        }
        run
    }
}

/// Sends every transmit, after partial sends too; returns how many datagrams
/// the kernel refused (dropped, as UDP allows). A GSO send the kernel
/// refuses turns GSO off and goes again datagram by datagram.
fn send_all(fd: RawFd, transmits: &[Transmit<'_>], scratch: &mut SendScratch, gso: &mut bool) -> u64 {
    let mut sent = 0;
    let mut failures = 0;
    let mut retried = None;
    while sent < transmits.len() {
        match send_batch(fd, &transmits[sent..], scratch) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A relay socket reports an ICMP error about an earlier datagram
            // on its next send (IP_RECVERR), and that send did not happen:
            // try it once more.
            Err(_) if retried != Some(sent) => retried = Some(sent),
            Err(e) => {
                let failed = transmits[sent];
                match failed.segment_size {
                    Some(size) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)) => {
                        if *gso {
                            warn!(error = %e, "the kernel refused a UDP GSO send; sending datagrams one by one from now on");
                            *gso = false;
                        }
                        for segment in failed.payload.chunks(usize::from(size)) {
                            let single = Transmit { payload: segment, segment_size: None, ..failed };
                            failures += send_all(fd, &[single], scratch, gso);
                        }
                    }
                    segments => {
                        trace!(error = %e, destination = %failed.destination, "udp send failed");
                        failures += segments.map_or(1, |size| failed.payload.len().div_ceil(usize::from(size)) as u64);
                    }
                }
                sent += 1;
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::io::sys::sockopt;

    fn receive_all(socket: &UdpSocket, expected: usize) -> Vec<Vec<u8>> {
        socket.set_read_timeout(Some(std::time::Duration::from_secs(2))).expect("timeout");
        let mut buf = [0u8; 2048];
        (0..expected).map_while(|_| socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())).collect()
    }

    #[test]
    fn datagrams_arrive_in_order_per_destination_whether_merged_or_not() {
        for gso in [false, true] {
            let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let gso = gso && sockopt::gso_supported(sender.as_raw_fd());
            let mut queue = OutQueue::new(gso);
            // Equal-size runs to `a`, interleaved with `b`, and a short last one.
            for i in 0..10u8 {
                queue.push(Via::Listener(0), a.local_addr().expect("addr"), None, &[i; 100]);
            }
            queue.push(Via::Listener(0), b.local_addr().expect("addr"), None, &[50; 30]);
            queue.push(Via::Listener(0), a.local_addr().expect("addr"), None, &[10; 100]);
            queue.push(Via::Listener(0), a.local_addr().expect("addr"), None, &[11; 7]);
            let flushed = queue.flush(|_| Some(sender.as_raw_fd()));
            assert_eq!(flushed.failures, 0);
            assert!(queue.is_empty());
            let got_a = receive_all(&a, 12);
            assert_eq!(got_a.len(), 12, "gso {gso}");
            for (i, datagram) in got_a.iter().enumerate() {
                let expected_len = if i == 11 { 7 } else { 100 };
                assert_eq!(datagram.len(), expected_len, "gso {gso}, datagram {i}");
                assert!(datagram.iter().all(|byte| usize::from(*byte) == i), "gso {gso}, datagram {i}");
            }
            assert_eq!(receive_all(&b, 1), vec![vec![50u8; 30]]);
        }
    }

    #[test]
    fn datagrams_for_a_closed_socket_are_dropped() {
        let mut queue = OutQueue::new(false);
        queue.push(Via::Relay(RelayId(3)), "127.0.0.1:9".parse().expect("literal"), None, b"x");
        let flushed = queue.flush(|_| None);
        assert_eq!(flushed.failures, 0);
        assert!(queue.is_empty());
    }
}
