//! Batched UDP syscalls: `recvmmsg` and `sendmmsg` with IP_PKTINFO /
//! IPV6_PKTINFO, so one syscall moves many datagrams and a socket bound to a
//! wildcard address learns, and answers from, the address each datagram was
//! sent to.
//!
//! This is the only module with `unsafe`. It is written against libc rather
//! than quinn-udp because quinn-udp sends one destination per syscall (GSO);
//! a relay answers many clients from one socket, which is what `sendmmsg`
//! batches.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;

/// Datagrams moved per syscall. quinn and the kernel's own UDP GRO path use
/// batches of this order; more buys little and costs stack and cache.
pub const BATCH: usize = 32;

/// Room for one PKTINFO control message, or one extended error and its
/// offender address, of either family, with alignment.
const CONTROL_LEN: usize = 64;

/// Control-message buffer aligned as `cmsghdr` requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct ControlBuf([u8; CONTROL_LEN]);

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

/// Whether the kernel does UDP GSO (Linux 4.18 and later).
pub fn gso_supported(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and sized for the option.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_UDP, libc::UDP_SEGMENT, (&mut value as *mut libc::c_int).cast(), &mut len)
    };
    rc == 0
}

/// One descriptor to wait on with [`wait_readable`], for threads that block
/// on a single socket (the load generator's peers) rather than run an event
/// loop.
pub struct PollFd(libc::pollfd);

impl PollFd {
    pub fn new(fd: RawFd) -> Self {
        Self(libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
    }
}

/// Waits up to `timeout` for the descriptor to become readable.
pub fn wait_readable(poll_fd: &mut PollFd, timeout: std::time::Duration) -> io::Result<bool> {
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, and its count, passed to poll(2).
    let ready = unsafe { libc::poll(&mut poll_fd.0, 1, millis) };
    if ready < 0 { Err(io::Error::last_os_error()) } else { Ok(ready > 0) }
}

/// Raises the limit on open descriptors (a relay holds a socket per
/// allocation): to `ceiling` where the process may raise its hard limit
/// (root), else to the hard limit. Returns the new soft limit.
pub fn raise_fd_limit(ceiling: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        let wanted = ceiling.max(limit.rlim_max);
        let privileged = libc::rlimit { rlim_cur: wanted, rlim_max: wanted };
        if wanted > limit.rlim_cur && libc::setrlimit(libc::RLIMIT_NOFILE, &privileged) == 0 {
            return Ok(wanted);
        }
        let unprivileged = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if limit.rlim_cur < limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &unprivileged) == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(limit.rlim_cur)
}

/// The most descriptors a process may have (`fs.nr_open`).
pub fn fd_ceiling() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20)
}

/// A user and group to run as, resolved from their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Looks up `user` (and `group`, else the user's primary group).
pub fn lookup_identity(user: &str, group: Option<&str>) -> Result<Identity, String> {
    let name = std::ffi::CString::new(user).map_err(|_| format!("user {user:?} contains a NUL byte"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r fills `pwd` and points its strings into `buf`, which
    // outlives the call; `result` is null when the user does not exist.
    let (uid, primary_gid) = unsafe {
        let mut pwd: libc::passwd = mem::zeroed();
        let mut result: *mut libc::passwd = ptr::null_mut();
        let rc = libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return Err(format!("no user named {user:?}"));
        }
        (pwd.pw_uid, pwd.pw_gid)
    };
    let gid = match group {
        None => primary_gid,
        Some(group) => {
            let name = std::ffi::CString::new(group).map_err(|_| format!("group {group:?} contains a NUL byte"))?;
            // SAFETY: as above, for getgrnam_r and a group entry.
            unsafe {
                let mut grp: libc::group = mem::zeroed();
                let mut result: *mut libc::group = ptr::null_mut();
                let rc = libc::getgrnam_r(name.as_ptr(), &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut result);
                if rc != 0 || result.is_null() {
                    return Err(format!("no group named {group:?}"));
                }
                grp.gr_gid
            }
        }
    };
    Ok(Identity { uid, gid })
}

/// Whether the process runs as root.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Becomes `identity` for good: supplementary groups dropped, then group,
/// then user (in that order, since after setuid the rest is no longer
/// allowed). glibc applies each change to every thread of the process.
pub fn drop_privileges(identity: Identity) -> io::Result<()> {
    // SAFETY: plain syscalls on integers; a failure leaves us as we were and
    // is reported.
    unsafe {
        if libc::getuid() == identity.uid && libc::geteuid() == identity.uid {
            return Ok(());
        }
        if libc::setgroups(0, ptr::null()) != 0 || libc::setgid(identity.gid) != 0 || libc::setuid(identity.uid) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Make sure there is no way back.
        if identity.uid != 0 && libc::setuid(0) == 0 {
            return Err(io::Error::other("privileges could be regained after dropping them"));
        }
    }
    Ok(())
}

/// Clock ticks per second of the CPU times in /proc/PID/stat.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Asks the kernel to report each datagram's destination address.
pub fn enable_pktinfo(fd: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// Sets the don't-fragment behaviour RFC 8656 §7.2 asks for with
/// DONT-FRAGMENT: DF on IPv4, no local fragmentation on IPv6.
pub fn set_dont_fragment(fd: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    }
}

/// Asks the kernel to queue ICMP errors about what the socket sent (RFC 8656
/// §11.5 relays them to the client), read with [`recv_icmp_error`].
pub fn enable_recv_err(fd: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)
    } else {
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1)
    }
}

/// An ICMP error about a datagram a socket sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    /// Where the datagram that caused it was going.
    pub destination: SocketAddr,
    /// ICMPv6 rather than ICMPv4.
    pub ipv6: bool,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The next-hop MTU, for "fragmentation needed" and "packet too big".
    pub info: u32,
}

/// Takes one entry from the socket's error queue: `Ok(Some(_))` for an ICMP
/// error, `Ok(None)` for an entry of another origin (skipped), `WouldBlock`
/// when the queue is empty.
pub fn recv_icmp_error(fd: RawFd) -> io::Result<Option<IcmpError>> {
    // SAFETY: plain C structs, all-zero is a valid empty value.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    // Room for the extended error and the offender's address of either family.
    let mut control = ControlBuf([0; CONTROL_LEN]);
    // The payload (the datagram that caused the error) is not needed.
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: as above.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = control.0.len();
    // SAFETY: every pointer in `hdr` points at a live local buffer of the
    // length given next to it.
    let rc = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let Some(destination) = sockaddr_to_std(&name, hdr.msg_namelen) else { return Ok(None) };
    // SAFETY: `hdr` was filled in by the kernel; the CMSG_* macros walk the
    // control buffer within `msg_controllen`, and the extended error is read
    // unaligned from the payload its level/type pair announces.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let recverr = (c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            if recverr {
                let err: libc::sock_extended_err = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let ipv6 = match err.ee_origin {
                    libc::SO_EE_ORIGIN_ICMP => false,
                    libc::SO_EE_ORIGIN_ICMP6 => true,
                    _ => return Ok(None),
                };
                return Ok(Some(IcmpError {
                    destination,
                    ipv6,
                    icmp_type: err.ee_type,
                    icmp_code: err.ee_code,
                    info: err.ee_info,
                }));
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    Ok(None)
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Every address configured on this host's interfaces, so the peer policy
/// can refuse them when tern listens on a wildcard address.
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` walks the list getifaddrs returned, which stays
        // valid until freeifaddrs below; ifa_addr may be null and is checked.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr of its family,
            // at most sockaddr_in6 long for the families read here.
            let family = libc::c_int::from(unsafe { (*entry.ifa_addr).sa_family });
            let len = match family {
                libc::AF_INET => mem::size_of::<libc::sockaddr_in>(),
                libc::AF_INET6 => mem::size_of::<libc::sockaddr_in6>(),
                _ => 0,
            };
            if len > 0 {
                let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
                // SAFETY: copies `len` bytes of a sockaddr of that family into
                // storage large enough for any sockaddr.
                let storage = unsafe {
                    ptr::copy_nonoverlapping(entry.ifa_addr.cast::<u8>(), storage.as_mut_ptr().cast::<u8>(), len);
                    storage.assume_init()
                };
                if let Some(addr) = sockaddr_to_std(&storage, len as libc::socklen_t) {
                    addresses.push(addr.ip());
                }
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addresses)
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len as usize >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin: &libc::sockaddr_in = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let mut out = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write(out.as_mut_ptr().cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write(out.as_mut_ptr().cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: zero-initialised, then partly overwritten with a valid sockaddr.
    *storage = unsafe { out.assume_init() };
    len as libc::socklen_t
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

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

    #[test]
    fn local_addresses_include_loopback() {
        let addresses = local_addresses().expect("getifaddrs");
        assert!(addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addresses:?}");
    }

    #[test]
    fn ipv6_addresses_survive_conversion() {
        let addr: SocketAddr = "[2001:db8::1]:3478".parse().expect("literal");
        // SAFETY: sockaddr_storage is plain bytes; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = std_to_sockaddr(&addr, &mut storage);
        assert_eq!(sockaddr_to_std(&storage, len), Some(addr));
    }
}
