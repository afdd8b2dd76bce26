//! Socket options set with setsockopt (and one probed with getsockopt):
//! PKTINFO for listeners on wildcard addresses, DONT-FRAGMENT and the ICMP
//! error queue for relay sockets (RFC 8656 §7.2, §11.5), and whether the
//! kernel does UDP GSO.

use std::io;
use std::mem;
use std::os::fd::RawFd;

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
/// §11.5 relays them to the client), read with
/// [`super::icmp::recv_icmp_error`].
pub fn enable_recv_err(fd: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)
    } else {
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1)
    }
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
