//! The worker's datagrams: client packets on the UDP listeners, peer
//! datagrams on the relay sockets, and ICMP errors from the relay sockets'
//! error queues, each read in `recvmmsg` batches and answered through the
//! out queue.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tracing::trace;

use super::{BATCHES_PER_WAKE, Delivery, Worker};
use crate::io::out::Via;
use crate::io::sys::batch::BATCH;
use crate::io::sys::icmp;
use crate::io::token::Source;
use crate::proto::allocation::{ClientHandle, RelayId};
use crate::proto::server::{ClientOutcome, IcmpReport, PEER_HEADROOM};
use crate::proto::{FiveTuple, Now, Transport};

impl Worker {
    pub(super) fn drain_udp(&mut self, index: usize, now: Now) {
        let fd = self.udp[index].0.as_raw_fd();
        let bound = self.udp[index].1;
        for _ in 0..BATCHES_PER_WAKE {
            let received = match self.client_batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors queued on the socket surface here; the next
                    // datagram is unaffected.
                    trace!(error = %e, "udp receive error");
                    continue;
                }
            };
            for i in 0..received {
                let meta = *self.client_batch.meta(i);
                if meta.truncated {
                    self.stats.truncated += 1;
                    continue;
                }
                // On a wildcard listener the server address is the one the
                // datagram was sent to, and answers must leave from it.
                let (local_ip, source_ip) = match meta.local_ip {
                    Some(ip) if bound.ip().is_unspecified() => (ip, Some(ip)),
                    _ => (bound.ip(), None),
                };
                let tuple = FiveTuple {
                    client: meta.source,
                    server: SocketAddr::new(local_ip, bound.port()),
                    transport: Transport::Udp,
                };
                let start = self.out.bytes_mut().len();
                let handle = ClientHandle(index as u64);
                let packet = self.client_batch.payload(i);
                match self.server.handle_client(now, &tuple, handle, packet, self.out.bytes_mut()) {
                    ClientOutcome::Dropped | ClientOutcome::Deferred => {}
                    // The core binds and hands over data connections on streams only.
                    ClientOutcome::Replied | ClientOutcome::ConnectionBound { .. } | ClientOutcome::HandOff { .. } => {
                        self.out.push_written(Via::Listener(index), meta.source, source_ip, start)
                    }
                    ClientOutcome::RepliedFrom { source, destination } => {
                        // RFC 5780: the core names one of the discovery
                        // addresses, and every worker listens on all four.
                        match self.udp.iter().position(|(_, bound)| *bound == source) {
                            Some(from) => self.out.push_written(Via::Listener(from), destination, None, start),
                            None => {
                                self.out.bytes_mut().truncate(start);
                                self.stats.send_failures += 1;
                            }
                        }
                    }
                    ClientOutcome::Forward { relay, peer, payload } => {
                        self.out.push(Via::Relay(relay), peer, None, &packet[payload]);
                    }
                }
            }
            if self.out.is_full() {
                self.flush();
            }
            if received < BATCH {
                return;
            }
        }
        self.pending.push(Source::Udp(index));
    }

    pub(super) fn drain_relay(&mut self, relay: RelayId, now: Now) {
        let Some(fd) = self.relays.fd(relay) else { return };
        for _ in 0..BATCHES_PER_WAKE {
            let received = match self.peer_batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // The socket's pending error: an ICMP error about
                    // something it sent, queued in full on its error queue.
                    trace!(error = %e, "relay receive error");
                    self.icmp_pending.push(relay);
                    continue;
                }
            };
            for i in 0..received {
                let meta = *self.peer_batch.meta(i);
                if meta.truncated {
                    self.stats.truncated += 1;
                    continue;
                }
                let slot = self.peer_batch.slot_mut(i);
                let Some(out) = self.server.handle_peer(now, relay, meta.source, slot, PEER_HEADROOM, meta.len) else {
                    continue;
                };
                let frame = &self.peer_batch.slot(i)[out.frame.0..out.frame.1];
                Delivery {
                    udp: &self.udp,
                    connections: &mut self.connections,
                    dirty: &mut self.dirty_connections,
                    out: &mut self.out,
                    stats: &mut self.stats,
                }
                .send(out.client, &out.tuple, frame);
            }
            if self.out.is_full() {
                self.flush();
            }
            if received < BATCH {
                return;
            }
        }
        self.pending.push(Source::Relay(relay));
    }

    /// Reads the relay socket's error queue and passes ICMP errors on to the
    /// core (RFC 8656 §11.5). Bounded per turn like a receive; what is left
    /// is read on the next turn.
    pub(super) fn drain_icmp(&mut self, relay: RelayId, now: Now) {
        let Some(fd) = self.relays.fd(relay) else { return };
        for _ in 0..BATCH {
            let error = match icmp::recv_icmp_error(fd) {
                Ok(Some(error)) => error,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    trace!(error = %e, "relay error queue");
                    return;
                }
            };
            let report = IcmpReport {
                peer: error.destination,
                ipv6: error.ipv6,
                icmp_type: error.icmp_type,
                icmp_code: error.icmp_code,
                mtu: error.info,
            };
            self.server.handle_icmp(now, relay, &report);
        }
        self.icmp_pending.push(relay);
    }
}
