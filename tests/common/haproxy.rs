//! HAProxy (Debian's `haproxy`) in front of tern, for the PROXY protocol
//! tests: started by the test on loopback with a configuration written to
//! a scratch file, in TCP mode, forwarding every connection to one tern
//! listener with a PROXY header (`send-proxy` for v1, `send-proxy-v2` for
//! v2) from a source address of the test's choosing. TLS passes through
//! untouched, as a TCP load balancer in front of `turns:` does.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern::io::clock;

use super::{STOP_TIMEOUT, find_on_path, require_tool, scratch_file, wait_bounded};

/// Where Debian installs it, off the `PATH` of users other than root.
const SBIN: &str = "/usr/sbin/haproxy";
/// How many free ports [`Haproxy::start`] tries before it gives up.
const ATTEMPTS: usize = 5;
/// How long HAProxy may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const MAX_POLLS: usize = 10_000;

/// Which PROXY protocol version HAProxy sends.
#[derive(Clone, Copy, Debug)]
pub enum SendProxy {
    V1,
    V2,
}

impl SendProxy {
    fn keyword(self) -> &'static str {
        match self {
            Self::V1 => "send-proxy",
            Self::V2 => "send-proxy-v2",
        }
    }
}

/// The `haproxy` binary: on the `PATH`, or in /usr/sbin.
fn binary() -> Option<std::path::PathBuf> {
    find_on_path("haproxy").or_else(|| Some(std::path::PathBuf::from(SBIN)).filter(|path| path.is_file()))
}

/// True when HAProxy is installed; otherwise what [`require_tool`] does
/// (the test fails in CI, and is skipped elsewhere).
pub fn installed() -> bool {
    binary().is_some() || require_tool("haproxy", "haproxy")
}

/// A running HAProxy. Dropping it kills the process (by PID) and reaps it.
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Haproxy {
    /// Starts HAProxy on a free port of 127.0.0.1, forwarding to `backend`
    /// from `source` with a PROXY header of `version`, and waits until it
    /// listens.
    pub fn start(backend: SocketAddr, version: SendProxy, source: IpAddr) -> Self {
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_tcp_port());
            let config = format!(
                "global\n    nbthread 1\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\
                 frontend clients\n    bind {addr}\n    default_backend tern\n\
                 backend tern\n    server tern {backend} {} source {source}\n",
                version.keyword()
            );
            let file = scratch_file("haproxy.cfg", &config);
            let log = scratch_file("haproxy.log", "");
            let output = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let errors = output.try_clone().expect("a second handle on the log");
            let mut child = Command::new(binary().expect("haproxy is installed (see `installed`)"))
                .arg("-db")
                .arg("-f")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(output)
                .stderr(errors)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run haproxy: {e}"));
            match wait_listening(&mut child, addr) {
                Ok(()) => return Self { child, addr, log },
                Err(reason) => {
                    let _ = child.kill();
                    let _ = wait_bounded(&mut child, STOP_TIMEOUT);
                    let printed = std::fs::read_to_string(&log).unwrap_or_default();
                    failures.push(format!("{addr}: {reason}: {printed}"));
                }
            }
        }
        panic!("haproxy did not come up in {ATTEMPTS} attempts: {failures:?}");
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // Not reaped yet, so the PID is still ours.
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, STOP_TIMEOUT);
        if std::thread::panicking() {
            let printed = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- haproxy output ---\n{printed}--- end of haproxy output ---");
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1 port 0");
    listener.local_addr().expect("bound listener has an address").port()
}

/// Waits until `addr` is taken (HAProxy listens there) or `child` exits.
/// Binding tells without connecting, so tern sees no connection of ours.
fn wait_listening(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = clock::now() + READY_TIMEOUT;
    for _ in 0..MAX_POLLS {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(()),
            _ => {}
        }
        if clock::now() >= deadline {
            return Err(format!("not listening within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(POLL);
    }
    Err("too many polls".into())
}
