//! Conversion between std's socket addresses and the kernel's
//! `sockaddr_storage`, shared by the batched syscalls, the error queue and
//! the interface list.

use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;

/// The address in `storage`, of `len` bytes as the kernel reported it;
/// `None` for a family other than IPv4 and IPv6.
pub(super) fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
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

/// Writes `addr` into `storage` and returns its length, for the kernel.
pub(super) fn std_to_sockaddr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
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
    use super::*;

    #[test]
    fn ipv6_addresses_survive_conversion() {
        let addr: SocketAddr = "[2001:db8::1]:3478".parse().expect("literal");
        // SAFETY: sockaddr_storage is plain bytes; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = std_to_sockaddr(&addr, &mut storage);
        assert_eq!(sockaddr_to_std(&storage, len), Some(addr));
    }
}
