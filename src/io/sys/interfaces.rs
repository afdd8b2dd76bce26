//! The addresses configured on this host's interfaces (getifaddrs).

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::IpAddr;
use std::ptr;

use super::sockaddr::sockaddr_to_std;

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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn local_addresses_include_loopback() {
        let addresses = local_addresses().expect("getifaddrs");
        assert!(addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addresses:?}");
    }
}
