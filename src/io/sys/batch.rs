//! Batched UDP syscalls: `recvmmsg` and `sendmmsg` with IP_PKTINFO /
//! IPV6_PKTINFO, so one syscall moves many datagrams and a socket bound to a
//! wildcard address learns, and answers from, the address each datagram was
//! sent to; and UDP GSO, so several datagrams to one destination go down the
//! stack as one.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::ptr;

use super::sockaddr::{sockaddr_to_std, std_to_sockaddr};
use super::{CONTROL_LEN, ControlBuf};

/// Datagrams moved per syscall. quinn and the kernel's own UDP GRO path use
/// batches of this order; more buys little and costs stack and cache.
pub const BATCH: usize = 32;

/// Metadata of one received datagram.
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    /// Bytes received, starting at the headroom the batch was received with.
    pub len: usize,
    /// The sender.
    pub source: SocketAddr,
    /// The local address the datagram was sent to, from PKTINFO.
    pub local_ip: Option<IpAddr>,
    /// The datagram did not fit its slot and was cut short.
    pub truncated: bool,
}

/// A set of receive slots and the syscall scratch space that points into them,
/// allocated once per socket owner and reused for every batch.
pub struct RecvBatch {
    storage: Vec<u8>,
    slot_len: usize,
    headroom: usize,
    meta: Vec<RecvMeta>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    control: Vec<ControlBuf>,
}

// SAFETY: the raw pointers inside the syscall headers are scratch: they are
// rewritten to point into `self` before every syscall and never read
// otherwise, so moving the batch to another thread cannot leave one dangling.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `slot_len` bytes per datagram, of which the first `headroom` are left
    /// free so a header can be written in front of the payload in place.
    pub fn new(slot_len: usize, headroom: usize) -> Self {
        assert!(headroom < slot_len, "headroom must leave room for data");
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        Self {
            storage: vec![0; slot_len * BATCH],
            slot_len,
            headroom,
            meta: vec![RecvMeta { len: 0, source: unspecified, local_ip: None, truncated: false }; BATCH],
            // SAFETY: these are plain C structs for which all-zero bytes are a
            // valid (empty) value; pointers in them are set before each use.
            hdrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            iovs: (0..BATCH).map(|_| libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: as above, sockaddr_storage is plain bytes.
            names: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            control: vec![ControlBuf([0; CONTROL_LEN]); BATCH],
        }
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Receives up to [`BATCH`] datagrams without blocking. Returns how many
    /// arrived; `WouldBlock` when none were waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let data_len = self.slot_len - self.headroom;
        for i in 0..BATCH {
            let slot = &mut self.storage[i * self.slot_len + self.headroom..(i + 1) * self.slot_len];
            self.iovs[i] = libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: data_len };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.control[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = CONTROL_LEN;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that stay
        // alive and unmoved for the duration of the call; lengths match them.
        let received = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, ptr::null_mut())
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        for i in 0..received {
            let hdr = &self.hdrs[i].msg_hdr;
            let source = sockaddr_to_std(&self.names[i], hdr.msg_namelen)
                .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            self.meta[i] = RecvMeta {
                len: self.hdrs[i].msg_len as usize,
                source,
                local_ip: read_pktinfo(hdr),
                truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        Ok(received)
    }

    pub fn meta(&self, index: usize) -> &RecvMeta {
        &self.meta[index]
    }

    /// The received bytes of datagram `index`.
    pub fn payload(&self, index: usize) -> &[u8] {
        let start = index * self.slot_len + self.headroom;
        &self.storage[start..start + self.meta[index].len]
    }

    /// The whole slot of datagram `index`, headroom included, for writing a
    /// header in front of the payload.
    pub fn slot_mut(&mut self, index: usize) -> &mut [u8] {
        &mut self.storage[index * self.slot_len..(index + 1) * self.slot_len]
    }

    /// The whole slot of datagram `index`.
    pub fn slot(&self, index: usize) -> &[u8] {
        &self.storage[index * self.slot_len..(index + 1) * self.slot_len]
    }

    /// Where slot `index` starts in [`Self::storage`].
    pub fn slot_start(&self, index: usize) -> usize {
        index * self.slot_len
    }

    /// Every slot, back to back, for sending ranges of several at once.
    pub fn storage(&self) -> &[u8] {
        &self.storage
    }
}

fn read_pktinfo(hdr: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: `hdr` was filled in by the kernel; the CMSG_* macros walk the
    // control buffer within `msg_controllen`, and each payload is read with
    // an unaligned read of the type its level/type pair announces.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))));
            }
            if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// One datagram to send, or with `segment_size` several of that size (the
/// last may be shorter) to one destination in one GSO send: the kernel runs
/// them through its stack as one packet and cuts them apart at the end.
#[derive(Clone, Copy, Debug)]
pub struct Transmit<'a> {
    pub destination: SocketAddr,
    /// Source address to send from, for sockets bound to a wildcard address.
    pub source_ip: Option<IpAddr>,
    pub payload: &'a [u8],
    pub segment_size: Option<u16>,
}

impl<'a> Transmit<'a> {
    /// A single datagram.
    pub fn new(destination: SocketAddr, source_ip: Option<IpAddr>, payload: &'a [u8]) -> Self {
        Self { destination, source_ip, payload, segment_size: None }
    }
}

/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS was 64
/// before Linux 6.9).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: an IPv6 datagram's payload limit, with room
/// for the UDP header.
pub const GSO_MAX_BYTES: usize = 65_000;

/// Scratch space for [`send_batch`], reused across calls.
pub struct SendScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    control: Vec<ControlBuf>,
}

// SAFETY: as for `RecvBatch`: the pointers are rewritten before every syscall.
unsafe impl Send for SendScratch {}

impl Default for SendScratch {
    fn default() -> Self {
        Self {
            // SAFETY: plain C structs, all-zero is a valid empty value.
            hdrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            iovs: (0..BATCH).map(|_| libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: as above.
            names: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            control: vec![ControlBuf([0; CONTROL_LEN]); BATCH],
        }
    }
}

/// Sends up to [`BATCH`] datagrams in one syscall. Returns how many the kernel
/// took; an error is the error of the first datagram not sent.
pub fn send_batch(fd: RawFd, transmits: &[Transmit<'_>], scratch: &mut SendScratch) -> io::Result<usize> {
    let count = transmits.len().min(BATCH);
    if count == 0 {
        return Ok(0);
    }
    for (i, transmit) in transmits[..count].iter().enumerate() {
        scratch.iovs[i] =
            libc::iovec { iov_base: transmit.payload.as_ptr() as *mut libc::c_void, iov_len: transmit.payload.len() };
        let name_len = std_to_sockaddr(&transmit.destination, &mut scratch.names[i]);
        let hdr = &mut scratch.hdrs[i].msg_hdr;
        hdr.msg_name = (&mut scratch.names[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = name_len;
        hdr.msg_iov = &mut scratch.iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_flags = 0;
        hdr.msg_controllen = 0;
        hdr.msg_control = ptr::null_mut();
        if transmit.source_ip.is_some() || transmit.segment_size.is_some() {
            hdr.msg_control = scratch.control[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = write_control(transmit.source_ip, transmit.segment_size, &mut scratch.control[i]);
        }
    }
    // SAFETY: every header points at `transmits` payloads and `scratch`
    // buffers, all alive and unmoved for the call; the kernel only reads them.
    let sent = unsafe { libc::sendmmsg(fd, scratch.hdrs.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT) };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
}

/// Writes the control messages of a send: PKTINFO selecting `source`, and
/// UDP_SEGMENT for a GSO send. Returns their total length.
fn write_control(source: Option<IpAddr>, segment_size: Option<u16>, buf: &mut ControlBuf) -> usize {
    buf.0 = [0; CONTROL_LEN];
    let mut used = 0;
    if let Some(source) = source {
        let (level, typ, data_len) = match source {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, mem::size_of::<libc::in_pktinfo>()),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, mem::size_of::<libc::in6_pktinfo>()),
        };
        // SAFETY: the cmsg header and data are written inside `buf` at
        // `used`, which is cmsg-aligned (CMSG_SPACE rounds up); the two
        // messages together (at most 40 + 16 bytes) fit CONTROL_LEN.
        unsafe {
            let cmsg = buf.0.as_mut_ptr().add(used).cast::<libc::cmsghdr>();
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = typ;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as libc::c_uint) as usize;
            let data = libc::CMSG_DATA(cmsg);
            match source {
                IpAddr::V4(ip) => {
                    let mut info: libc::in_pktinfo = mem::zeroed();
                    info.ipi_spec_dst.s_addr = u32::from(ip).to_be();
                    ptr::write_unaligned(data.cast(), info);
                }
                IpAddr::V6(ip) => {
                    let mut info: libc::in6_pktinfo = mem::zeroed();
                    info.ipi6_addr.s6_addr = ip.octets();
                    ptr::write_unaligned(data.cast(), info);
                }
            }
            used += libc::CMSG_SPACE(data_len as libc::c_uint) as usize;
        }
    }
    if let Some(size) = segment_size {
        // SAFETY: as above; a u16 is written as the UDP_SEGMENT payload.
        unsafe {
            let cmsg = buf.0.as_mut_ptr().add(used).cast::<libc::cmsghdr>();
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as libc::c_uint) as usize;
            ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
            used += libc::CMSG_SPACE(mem::size_of::<u16>() as libc::c_uint) as usize;
        }
    }
    debug_assert!(used <= CONTROL_LEN);
    used
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::io::sys::sockopt::{enable_pktinfo, gso_supported};

    #[test]
    fn batch_round_trip_reports_source_and_destination() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver.set_nonblocking(true).expect("nonblocking");
        enable_pktinfo(receiver.as_raw_fd(), false).expect("pktinfo");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = receiver.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let transmits: Vec<_> =
            payloads.iter().map(|p| Transmit::new(to, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), p)).collect();
        let mut scratch = SendScratch::default();
        assert_eq!(send_batch(sender.as_raw_fd(), &transmits, &mut scratch).expect("send"), 5);

        let mut batch = RecvBatch::new(2048, 48);
        let mut got = Vec::new();
        for _ in 0..100 {
            match batch.recv(receiver.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let meta = *batch.meta(i);
                        assert_eq!(meta.source, sender.local_addr().expect("addr"));
                        assert_eq!(meta.local_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                        assert!(!meta.truncated);
                        got.push(batch.payload(i).to_vec());
                    }
                    if got.len() == 5 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn gso_send_arrives_as_separate_datagrams() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver.set_nonblocking(true).expect("nonblocking");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        if !gso_supported(sender.as_raw_fd()) {
            eprintln!("skipping: no UDP GSO on this kernel");
            return;
        }
        // Three segments of 100 bytes and a last one of 40.
        let payload: Vec<u8> = (0..340u32).map(|i| (i / 100) as u8).collect();
        let to = receiver.local_addr().expect("addr");
        let transmit = Transmit { destination: to, source_ip: None, payload: &payload, segment_size: Some(100) };
        let mut scratch = SendScratch::default();
        assert_eq!(send_batch(sender.as_raw_fd(), &[transmit], &mut scratch).expect("send"), 1);
        let mut batch = RecvBatch::new(2048, 0);
        let mut got = Vec::new();
        for _ in 0..100 {
            if let Ok(n) = batch.recv(receiver.as_raw_fd()) {
                got.extend((0..n).map(|i| batch.payload(i).to_vec()));
            }
            if got.len() >= 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let lengths: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(lengths, [100, 100, 100, 40]);
        assert!(got[3].iter().all(|b| *b == 3));
    }
}
