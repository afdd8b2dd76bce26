//! The process, not its sockets: the open-file limit, the user and group to
//! run as and the drop to them, whether it runs as root, and the clock tick
//! its CPU times in /proc are counted in.

use std::io;
use std::mem;
use std::ptr;

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
