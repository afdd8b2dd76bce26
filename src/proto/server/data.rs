//! The data path (RFC 8656 §11, §12): Send indications and ChannelData
//! from clients to peers, peer datagrams to clients as ChannelData or Data
//! indications, and ICMP errors about relayed datagrams (§11.5).
//!
//! This is the per-packet path: it allocates nothing, borrows the client's
//! packet for what goes to the peer, and writes the header of what goes to
//! the client in front of the peer's payload, in place.

use std::net::SocketAddr;

use tracing::{debug, trace};

use super::{ClientOutcome, IcmpReport, Path, PeerOutcome, Server, Transmit};
use crate::proto::allocation::RelayId;
use crate::proto::channel_data::{self, ChannelData};
use crate::proto::policy;
use crate::proto::stun::indication;
use crate::proto::stun::{
    ATTR_HEADER_LEN, AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId,
};
use crate::proto::{FiveTuple, Now};

/// Room a driver must leave in front of a peer's payload: the largest Data
/// indication header (STUN header, XOR-PEER-ADDRESS with an IPv6 address,
/// DATA attribute header).
pub const PEER_HEADROOM: usize = indication::MAX_HEADER_LEN;
/// Room a driver must leave after a peer's payload for padding to four bytes.
pub const PEER_TAILROOM: usize = indication::MAX_PADDING;

impl Server {
    /// Handles a datagram a peer sent to the relay socket of `id`. The
    /// payload sits at `slot[headroom..headroom + len]`; the ChannelData or
    /// Data indication header is written in front of it, and padding after
    /// it, in place. `headroom` must be at least [`PEER_HEADROOM`] and the
    /// slot must extend [`PEER_TAILROOM`] bytes past the payload.
    pub fn handle_peer(
        &mut self,
        now: Now,
        relay: RelayId,
        peer: SocketAddr,
        slot: &mut [u8],
        headroom: usize,
        len: usize,
    ) -> Option<PeerOutcome> {
        let allocation = self.table.get_mut(relay.allocation())?;
        if allocation.is_expired(now.instant) || !allocation.has_permission(peer.ip(), now.instant) {
            self.stats.dropped_no_permission += 1;
            trace!(%peer, "peer data dropped: no permission");
            return None;
        }
        if !allocation.within_bandwidth(false, len, now.instant) {
            self.stats.over_bandwidth += 1;
            return None;
        }
        let stream = allocation.tuple.transport.is_stream();
        let frame = match allocation.peer_channel(peer, now.instant) {
            Some(channel) => channel_data::write_in_place(slot, headroom, len, channel, stream)?,
            None => {
                let tid = next_indication_tid(&self.indication_prefix, &mut self.indication_counter);
                indication::write_in_place(slot, headroom, len, indication::Kind::Data, &peer, TransactionId(tid))?
            }
        };
        allocation.traffic.packets_to_client += 1;
        allocation.traffic.bytes_to_client += len as u64;
        self.stats.relayed_to_client += 1;
        self.stats.relayed_bytes_to_client += len as u64;
        Some(PeerOutcome { client: allocation.client, tuple: allocation.tuple, frame })
    }

    /// RFC 8656 §11.5: an ICMP error about a datagram the relay sent goes to
    /// the client as a Data indication with XOR-PEER-ADDRESS and ICMP, when
    /// it is of a kind the RFC relays (ICMPv4 destination unreachable or
    /// time exceeded; ICMPv6 destination unreachable, packet too big or time
    /// exceeded) and the peer has a permission. The indication follows from
    /// [`Self::poll_transmit`].
    pub fn handle_icmp(&mut self, now: Now, relay: RelayId, report: &IcmpReport) {
        let relayed = matches!((report.ipv6, report.icmp_type), (false, 3 | 11) | (true, 1..=3));
        let Some(allocation) = self.table.get(relay.allocation()) else { return };
        let peer = SocketAddr::new(policy::canonical(report.peer.ip()), report.peer.port());
        if !relayed || allocation.is_expired(now.instant) || !allocation.has_permission(peer.ip(), now.instant) {
            trace!(%peer, icmp_type = report.icmp_type, "ICMP error not relayed");
            return;
        }
        // Error Data carries the MTU for "fragmentation needed" and "packet
        // too big" (RFC 8656 §18.13), and is zero otherwise.
        let mtu_error = matches!((report.ipv6, report.icmp_type, report.icmp_code), (false, 3, 4) | (true, 2, _));
        let error_data = if mtu_error { report.mtu } else { 0 };
        let mut icmp = [0u8; 8];
        icmp[2] = report.icmp_type;
        icmp[3] = report.icmp_code;
        icmp[4..].copy_from_slice(&error_data.to_be_bytes());
        let tid = next_indication_tid(&self.indication_prefix, &mut self.indication_counter);
        debug!(parent: &allocation.span, %peer, icmp_type = report.icmp_type, icmp_code = report.icmp_code, "ICMP error relayed");
        self.stats.icmp_relayed += 1;
        self.outbox.push(Transmit { client: allocation.client, tuple: allocation.tuple }, |out| {
            let mut w = MessageWriter::new(out, MessageType::new(Method::DATA, Class::Indication), TransactionId(tid));
            w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer).attr(AttrType::ICMP, &icmp);
        });
    }

    /// RFC 8656 §11.1: a Send indication goes to its peer only with a
    /// permission; otherwise it is dropped silently.
    pub(super) fn handle_send(&mut self, now: Now, tuple: &FiveTuple, message: &Message<'_>) -> ClientOutcome {
        let Some(id) = self.table.find(tuple) else { return self.drop_client_data("Send without allocation") };
        if self.table.get(id).is_some_and(|a| a.tcp_relay) {
            return self.drop_client_data("Send on a TCP allocation");
        }
        let Some(peer) = message.attribute(AttrType::XOR_PEER_ADDRESS) else {
            return self.drop_client_data("Send without XOR-PEER-ADDRESS");
        };
        let Some(data) = message.attributes().find(|a| a.typ == AttrType::DATA) else {
            return self.drop_client_data("Send without DATA");
        };
        let Ok(peer) = self.checked_peer(id, peer, message, Path::Send) else {
            return self.drop_client_data("Send to refused peer");
        };
        let allocation = self.table.get_mut(id).expect("indexed allocations exist");
        if allocation.is_expired(now.instant) || !allocation.has_permission(peer.ip(), now.instant) {
            return self.drop_client_data("Send without permission");
        }
        if !allocation.within_bandwidth(true, data.value.len(), now.instant) {
            self.stats.over_bandwidth += 1;
            return ClientOutcome::Dropped;
        }
        let start = data.offset + ATTR_HEADER_LEN;
        allocation.traffic.packets_to_peer += 1;
        allocation.traffic.bytes_to_peer += data.value.len() as u64;
        self.stats.relayed_to_peer += 1;
        self.stats.relayed_bytes_to_peer += data.value.len() as u64;
        ClientOutcome::Forward {
            relay: RelayId::new(id, peer.is_ipv6()),
            peer,
            payload: start..start + data.value.len(),
        }
    }

    /// RFC 8656 §12.6: ChannelData on a bound channel goes to its peer.
    pub(super) fn handle_channel_data(&mut self, now: Now, tuple: &FiveTuple, packet: &[u8]) -> ClientOutcome {
        let data = match ChannelData::parse(packet) {
            Ok(data) => data,
            Err(error) => return self.drop_malformed(tuple, error),
        };
        let Some(id) = self.table.find(tuple) else { return self.drop_client_data("ChannelData without allocation") };
        let allocation = self.table.get_mut(id).expect("indexed allocations exist");
        if allocation.is_expired(now.instant) {
            return self.drop_client_data("ChannelData on expired allocation");
        }
        let Some(peer) = allocation.channel_peer(data.channel, now.instant) else {
            return self.drop_client_data("ChannelData on unbound channel");
        };
        if !allocation.within_bandwidth(true, data.payload.len(), now.instant) {
            self.stats.over_bandwidth += 1;
            return ClientOutcome::Dropped;
        }
        allocation.traffic.packets_to_peer += 1;
        allocation.traffic.bytes_to_peer += data.payload.len() as u64;
        self.stats.relayed_to_peer += 1;
        self.stats.relayed_bytes_to_peer += data.payload.len() as u64;
        let start = channel_data::HEADER_LEN;
        ClientOutcome::Forward {
            relay: RelayId::new(id, peer.is_ipv6()),
            peer,
            payload: start..start + data.payload.len(),
        }
    }
}

/// A Data indication's transaction ID: the server's random prefix and a
/// counter, unique without a random draw per packet.
pub(super) fn next_indication_tid(prefix: &[u8; 4], counter: &mut u64) -> [u8; 12] {
    *counter += 1;
    let mut tid = [0u8; 12];
    tid[..4].copy_from_slice(prefix);
    tid[4..].copy_from_slice(&counter.to_be_bytes());
    tid
}
