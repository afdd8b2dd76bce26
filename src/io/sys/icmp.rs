//! A relay socket's error queue (MSG_ERRQUEUE): the ICMP errors the kernel
//! queued about datagrams the socket sent, which RFC 8656 §11.5 relays to
//! the client. The queue is switched on by [`super::sockopt::enable_recv_err`].

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr;

use super::sockaddr::sockaddr_to_std;
use super::{CONTROL_LEN, ControlBuf};

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
