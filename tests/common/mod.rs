//! Harness for the end-to-end tests: runs the real `tern` binary, reads its
//! JSON log, and talks STUN to it over loopback.
//!
//! Every wait here is bounded twice, by a deadline and by an iteration count,
//! so a broken server fails a test instead of hanging the suite. Timeouts are
//! generous on purpose: the machine is shared, and no assertion depends on how
//! fast anything is, only on what arrives (or does not) within a long bound.
//!
//! Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tern::io::clock;
use tern::proto::Transport;
use tern::proto::demux::StreamFramer;
use tern::proto::stun::attr::{self, AttrType};
use tern::proto::stun::{Class, HEADER_LEN, MAGIC_COOKIE, Message, MessageType, MessageWriter, Method, TransactionId};

pub mod chromium;
pub mod engines;
pub mod haproxy;
pub mod metrics;
pub mod netns;

/// How long the server may take to log that it listens.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a one-shot command (`tern check`, `tern stun`, a third-party
/// client) may run before it is killed and the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a TCP connection or a TCP answer that must come.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to listen for an answer that must not come. Only a backstop: the
/// tests that use it also send a good request afterwards and check that its
/// answer is the first thing to arrive, which does not depend on timing.
pub const SILENCE: Duration = Duration::from_millis(300);
/// Upper bound on the turns of any polling loop, on top of its deadline.
const MAX_TURNS: usize = 100_000;
/// Polling step of the loops that wait on a child process.
const POLL_STEP: Duration = Duration::from_millis(10);

pub const LOOPBACK_V4: &str = "127.0.0.1:0";
pub const LOOPBACK_V6: &str = "[::1]:0";

/// Path of the binary under test.
pub fn tern_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tern")
}

/// A `tern` command with a clean logging environment: `RUST_LOG` would
/// replace the configured level and could hide the "listening" lines. Nor
/// does it talk to a systemd the tests may run under (`NOTIFY_SOCKET`).
pub fn tern_command(args: &[&str]) -> Command {
    let mut command = Command::new(tern_bin());
    command.args(args).env_remove("RUST_LOG").env_remove("NOTIFY_SOCKET").stdin(Stdio::null());
    command
}

/// Runs `tern ARGS` to completion (bounded by [`COMMAND_TIMEOUT`]).
pub fn run_tern(args: &[&str]) -> Output {
    run_bounded(&mut tern_command(args), COMMAND_TIMEOUT)
}

/// Runs a command to completion, collecting stdout and stderr. A command
/// still running after `timeout` is killed and the test fails.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let stdout = drain_in_background(child.stdout.take().expect("stdout is piped"));
    let stderr = drain_in_background(child.stderr.take().expect("stderr is piped"));
    let status = match wait_bounded(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, STOP_TIMEOUT);
            let stderr = join_bounded(stderr).unwrap_or_default();
            panic!(
                "{description} still running after {timeout:?}; killed it. stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    let stdout = join_bounded(stdout).unwrap_or_default();
    let stderr = join_bounded(stderr).unwrap_or_default();
    Output { status, stdout, stderr }
}

fn drain_in_background(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Joins a reader thread, giving up after [`STOP_TIMEOUT`] (a grandchild
/// holding the pipe open would otherwise block forever).
fn join_bounded<T>(handle: JoinHandle<T>) -> Option<T> {
    let deadline = clock::now() + STOP_TIMEOUT;
    for _ in 0..MAX_TURNS {
        if handle.is_finished() {
            return handle.join().ok();
        }
        if clock::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_STEP);
    }
    None
}

/// Waits for `child` to exit, at most `timeout`. `None` if it is still running.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = clock::now() + timeout;
    for _ in 0..MAX_TURNS {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if clock::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_STEP);
    }
    None
}

/// True when `name` is an executable on `PATH`. When it is missing: with
/// `TERN_REQUIRE_INTEROP=1` (CI) the test fails; otherwise the test prints a
/// notice and should return early. `package` is the Debian package that has it.
pub fn require_tool(name: &str, package: &str) -> bool {
    if find_on_path(name).is_some() {
        return true;
    }
    if std::env::var("TERN_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!(
            "{name} is not installed, and TERN_REQUIRE_INTEROP=1 makes interop tests mandatory (apt-get install {package})"
        );
    }
    eprintln!("skipping: {name} not installed (apt-get install {package})");
    false
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A UDP port on `ip` that was free a moment ago: bound, read and released.
/// Someone else may take it before the caller binds it, so callers must
/// check that their bind worked ([`PeerProcess::start`] does).
pub fn free_udp_port(ip: IpAddr) -> u16 {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap_or_else(|e| panic!("binding {ip} port 0: {e}"));
    socket.local_addr().expect("bound socket has an address").port()
}

/// How many ports [`PeerProcess::start`] tries before it gives up.
const PEER_ATTEMPTS: usize = 5;
/// How long a started `turnutils_peer` may take to echo its first datagram.
const PEER_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait for one echo of the readiness probe before sending it again.
const PEER_PROBE_WAIT: Duration = Duration::from_millis(200);

/// A running `turnutils_peer` (coturn's UDP echo peer) on a loopback
/// address. Dropping it kills the process by PID and reaps it.
pub struct PeerProcess {
    child: Child,
    addr: SocketAddr,
}

impl PeerProcess {
    /// Starts `turnutils_peer -p PORT -L IP` on a free port of `ip` and waits
    /// until it echoes a datagram. `turnutils_peer` does not exit when its
    /// port is taken (it retries the bind forever), so a peer that does not
    /// echo is killed and another port is tried.
    pub fn start(ip: IpAddr) -> Self {
        let mut failures = Vec::new();
        for _ in 0..PEER_ATTEMPTS {
            let addr = SocketAddr::new(ip, free_udp_port(ip));
            let mut child = Command::new("turnutils_peer")
                .args(["-p", &addr.port().to_string(), "-L", &ip.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run turnutils_peer: {e}"));
            match wait_for_echo(&mut child, addr) {
                Ok(()) => return Self { child, addr },
                Err(reason) => {
                    let _ = child.kill();
                    let _ = wait_bounded(&mut child, STOP_TIMEOUT);
                    failures.push(format!("{addr}: {reason}"));
                }
            }
        }
        panic!("turnutils_peer did not come up in {PEER_ATTEMPTS} attempts: {failures:?}");
    }

    /// The address the peer echoes on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        // Not reaped yet, so the PID is still ours.
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, STOP_TIMEOUT);
    }
}

/// Sends a probe to `addr` until it comes back (within [`PEER_READY_TIMEOUT`])
/// or `child` exits.
fn wait_for_echo(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let local = if addr.is_ipv4() { LOOPBACK_V4 } else { LOOPBACK_V6 };
    let socket = UdpSocket::bind(local).map_err(|e| format!("binding {local}: {e}"))?;
    socket.set_read_timeout(Some(PEER_PROBE_WAIT)).map_err(|e| format!("set_read_timeout: {e}"))?;
    let probe = b"tern interop: is the peer up?";
    let deadline = clock::now() + PEER_READY_TIMEOUT;
    let mut buf = [0u8; 256];
    for _ in 0..MAX_TURNS {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if clock::now() >= deadline {
            return Err(format!("no echo within {PEER_READY_TIMEOUT:?}"));
        }
        // Refused (ICMP port unreachable) until the peer has bound: try again.
        let _ = socket.send_to(probe, addr);
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && from == addr
            && buf[..n] == probe[..]
        {
            return Ok(());
        }
    }
    Err("too many probes".into())
}

/// A scratch file under the target directory, unique to this test process
/// and `name`, holding `contents`.
pub fn scratch_file(name: &str, contents: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(format!("{}-{name}", COUNTER.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// A self-signed certificate for `localhost` and 127.0.0.1 and ::1, made
/// with rcgen, as PEM files in a scratch directory.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate's DER, to compare with what a server presents.
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn new(name: &str) -> Self {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        let generated = rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
        let cert = scratch_file(&format!("{name}-cert.pem"), &generated.cert.pem());
        let key = scratch_file(&format!("{name}-key.pem"), &generated.signing_key.serialize_pem());
        Self { cert, key, der: generated.cert.der().to_vec() }
    }

    /// Like [`TestCert::new`], valid from `not_before` to `not_after`
    /// (`(year, month, day)`), such as an expired one.
    pub fn with_validity(name: &str, not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Self {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        let mut params = rcgen::CertificateParams::new(names).expect("valid names");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("rcgen makes a key");
        let generated = params.self_signed(&key).expect("rcgen signs the certificate");
        let cert = scratch_file(&format!("{name}-cert.pem"), &generated.pem());
        let key = scratch_file(&format!("{name}-key.pem"), &key.serialize_pem());
        Self { cert, key, der: generated.der().to_vec() }
    }

    pub fn cert_path(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }

    pub fn key_path(&self) -> &str {
        self.key.to_str().expect("utf-8 path")
    }

    /// A client trusting this certificate only, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> tern::client::tls::TlsClient {
        tern::client::tls::TlsClient::new(&tern::client::tls::TlsOptions {
            server_name: "localhost".into(),
            ca: Some(self.cert.clone()),
            insecure: false,
            alpn: alpn.iter().map(|id| id.to_vec()).collect(),
        })
        .expect("client config")
    }

    /// `--tls-listen 127.0.0.1:0 --tls-cert CERT --tls-key KEY`.
    pub fn serve_args(&self) -> Vec<&str> {
        vec!["--tls-listen", LOOPBACK_V4, "--tls-cert", self.cert_path(), "--tls-key", self.key_path()]
    }
}

/// Why `tern serve` did not come up.
#[derive(Debug)]
pub struct StartFailure {
    pub reason: String,
    pub status: Option<ExitStatus>,
    pub stderr: Vec<String>,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "tern serve did not start: {} (exit status {:?}); stderr:", self.reason, self.status)?;
        for line in &self.stderr {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// A running `tern serve`. Dropping it kills the process (SIGKILL, by PID)
/// and reaps it; [`TernServer::stop`] asks it to stop with SIGTERM instead.
pub struct TernServer {
    child: Option<Child>,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    listening: Vec<(Transport, SocketAddr)>,
    /// The PROXY protocol listeners, apart from `listening`.
    proxied: Vec<(Transport, SocketAddr)>,
}

impl TernServer {
    /// Starts `tern serve --log-format json --log-allocations --listen 127.0.0.1:0 ARGS` and
    /// waits until it logs its listening addresses. When `args` contains
    /// `--listen`, those addresses replace the default one. Panics, with the
    /// server's stderr, if it does not come up.
    pub fn start(args: &[&str]) -> Self {
        Self::try_start(args).unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Like [`TernServer::start`] but adds no `--listen`, so a `--config`
    /// file's `listen` applies.
    pub fn start_without_default_listen(args: &[&str]) -> Self {
        Self::spawn(args, false, &[]).unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Like [`TernServer::start_without_default_listen`] but returns the failure.
    pub fn try_start_without_default_listen(args: &[&str]) -> Result<Self, StartFailure> {
        Self::spawn(args, false, &[])
    }

    /// Like [`TernServer::start`] but returns the failure.
    pub fn try_start(args: &[&str]) -> Result<Self, StartFailure> {
        Self::try_start_with_env(args, &[])
    }

    /// Like [`TernServer::try_start`], with `env` added to the server's
    /// environment.
    pub fn try_start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Self, StartFailure> {
        Self::spawn(args, !args.iter().any(|a| is_listen_flag(a)), env)
    }

    fn spawn(args: &[&str], default_listen: bool, env: &[(&str, &str)]) -> Result<Self, StartFailure> {
        // Tests read allocation lifecycle lines from the log.
        let mut full = vec!["serve", "--log-format", "json", "--log-allocations"];
        if default_listen {
            full.extend(["--listen", LOOPBACK_V4]);
        }
        full.extend_from_slice(args);
        let expected = match full.iter().filter(|a| is_listen_flag(a)).count() {
            0 => None,
            n => Some(n),
        };
        let expected_tls = full.iter().filter(|a| is_tls_listen_flag(a)).count();
        let expected_proxied = full.iter().filter(|a| is_proxy_listen_flag(a)).count();
        let mut child = tern_command(&full)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tern_bin()));
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line.clone());
                    // The test may have stopped listening; the lines are kept anyway.
                    let _ = sender.send(line);
                }
            })
        };
        let mut server =
            Self { child: Some(child), pid, lines, reader: Some(reader), listening: Vec::new(), proxied: Vec::new() };
        match server.wait_listening(&receiver, expected, expected_tls, expected_proxied) {
            Ok(()) => Ok(server),
            Err(reason) => {
                let status = server.kill_and_reap();
                Err(StartFailure { reason, status, stderr: server.stderr_lines() })
            }
        }
    }

    /// Reads log lines until every listen address has been announced for
    /// UDP and for TCP, as many TLS addresses as `--tls-listen` flags, and
    /// as many PROXY protocol addresses as `--proxy-listen` and
    /// `--proxy-tls-listen` flags.
    /// tern logs all its UDP addresses, then all its TCP ones, then TLS, so
    /// equal non-zero counts mean the list is complete; when the number of
    /// `--listen` flags is known it must match too.
    fn wait_listening(
        &mut self,
        lines: &mpsc::Receiver<String>,
        expected: Option<usize>,
        expected_tls: usize,
        expected_proxied: usize,
    ) -> Result<(), String> {
        let deadline = clock::now() + START_TIMEOUT;
        for _ in 0..MAX_TURNS {
            let udp = self.listening.iter().filter(|(t, _)| *t == Transport::Udp).count();
            let tcp = self.listening.iter().filter(|(t, _)| *t == Transport::Tcp).count();
            let tls = self.listening.iter().filter(|(t, _)| *t == Transport::Tls).count();
            let proxied = self.proxied.len();
            if udp > 0
                && udp == tcp
                && expected.is_none_or(|n| n == udp)
                && tls >= expected_tls
                && proxied >= expected_proxied
            {
                return Ok(());
            }
            let now = clock::now();
            if now >= deadline {
                return Err(format!("no complete \"listening\" log within {START_TIMEOUT:?}"));
            }
            match lines.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
                Ok(line) => match parse_listening(&line)? {
                    Some(Listening { at, proxied: true }) => self.proxied.push(at),
                    Some(Listening { at, proxied: false }) => self.listening.push(at),
                    None => {}
                },
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err("stderr closed: the server exited".into()),
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("the server exited with {status}"));
            }
        }
        Err("too many log lines before \"listening\"".into())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The UDP address of the first listen address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.addrs(Transport::Udp)[0]
    }

    /// The TCP address of the first listen address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.addrs(Transport::Tcp)[0]
    }

    /// The first TLS address.
    pub fn tls_addr(&self) -> SocketAddr {
        self.addrs(Transport::Tls)[0]
    }

    /// The first PROXY protocol listener over `transport` (TCP or TLS).
    pub fn proxy_addr(&self, transport: Transport) -> SocketAddr {
        self.proxied
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("no PROXY {transport} listener in {:?}", self.proxied))
    }

    /// Sends `signal` (SIGHUP, say) to the running server.
    pub fn signal(&self, signal: libc::c_int) {
        assert!(self.child.is_some(), "the server is running");
        // The child is not reaped yet, so its PID cannot have been reused.
        let pid = libc::pid_t::try_from(self.pid).expect("PIDs fit in pid_t");
        // SAFETY: kill(2) with a PID we own and a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", io::Error::last_os_error());
    }

    /// Waits until a log line with `message` (and, when given, whose JSON
    /// holds `field` = `value`) has appeared `count` times; fails the test
    /// after `timeout`.
    pub fn wait_for_log(&self, message: &str, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = clock::now() + timeout;
        for _ in 0..MAX_TURNS {
            let found: Vec<serde_json::Value> = self
                .stderr_lines()
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|value| value["message"] == message)
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                clock::now() < deadline,
                "{count} {message:?} log lines expected within {timeout:?}:\n{}",
                self.stderr_lines().join("\n")
            );
            std::thread::sleep(POLL_STEP);
        }
        panic!("{count} {message:?} log lines expected");
    }

    /// Every address listened on, with its transport, in the order logged.
    pub fn listening(&self) -> &[(Transport, SocketAddr)] {
        &self.listening
    }

    /// The addresses listened on over `transport`.
    pub fn addrs(&self, transport: Transport) -> Vec<SocketAddr> {
        self.listening.iter().filter(|(t, _)| *t == transport).map(|(_, a)| *a).collect()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn stop(self) -> ExitStatus {
        self.stop_with_log().0
    }

    /// Like [`TernServer::stop`], also returning every stderr line, the
    /// final "tern stopped" summary included.
    pub fn stop_with_log(self) -> (ExitStatus, Vec<String>) {
        self.stop_with_signal(libc::SIGTERM)
    }

    /// Like [`TernServer::stop_with_log`], checking that tern exits 0 and
    /// returning its "tern stopped" summary with the log.
    pub fn stop_with_summary(self) -> (serde_json::Value, Vec<String>) {
        let (status, lines) = self.stop_with_log();
        assert!(status.success(), "tern exits 0 on SIGTERM: {status}\n{}", lines.join("\n"));
        let stopped = find_log(&lines, "tern stopped").unwrap_or_else(|| panic!("summary line:\n{}", lines.join("\n")));
        (stopped, lines)
    }

    /// Sends `signal` and waits (bounded) for the process to exit; returns
    /// its status and every stderr line.
    pub fn stop_with_signal(mut self, signal: libc::c_int) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("the server is running");
        // The child is not reaped yet, so its PID cannot have been reused.
        let pid = libc::pid_t::try_from(self.pid).expect("PIDs fit in pid_t");
        // SAFETY: kill(2) with a PID we own and a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", io::Error::last_os_error());
        let Some(status) = wait_bounded(&mut child, STOP_TIMEOUT) else {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, STOP_TIMEOUT);
            panic!(
                "tern did not exit within {STOP_TIMEOUT:?} of signal {signal}; stderr:\n{}",
                self.stderr_lines().join("\n")
            );
        };
        if let Some(reader) = self.reader.take() {
            join_bounded(reader);
        }
        (status, self.stderr_lines())
    }

    /// Waits (bounded by `timeout`) for the process to exit by itself;
    /// returns its status and every stderr line, or panics with the log.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("the server is running");
        let Some(status) = wait_bounded(&mut child, timeout) else {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, STOP_TIMEOUT);
            panic!("tern did not exit within {timeout:?}; stderr:\n{}", self.stderr_lines().join("\n"));
        };
        if let Some(reader) = self.reader.take() {
            join_bounded(reader);
        }
        (status, self.stderr_lines())
    }

    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let status = match child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                let _ = child.kill();
                wait_bounded(&mut child, STOP_TIMEOUT)
            }
        };
        if let Some(reader) = self.reader.take() {
            join_bounded(reader);
        }
        status
    }
}

impl Drop for TernServer {
    fn drop(&mut self) {
        self.kill_and_reap();
        if std::thread::panicking() {
            eprintln!("--- tern (pid {}) stderr ---", self.pid);
            for line in self.stderr_lines() {
                eprintln!("{line}");
            }
            eprintln!("--- end of tern stderr ---");
        }
    }
}

fn is_listen_flag(arg: &str) -> bool {
    arg == "--listen" || arg.starts_with("--listen=")
}

fn is_tls_listen_flag(arg: &str) -> bool {
    arg == "--tls-listen" || arg.starts_with("--tls-listen=")
}

fn is_proxy_listen_flag(arg: &str) -> bool {
    ["--proxy-listen", "--proxy-tls-listen"].iter().any(|flag| arg == *flag || arg.starts_with(&format!("{flag}=")))
}

/// What a `"message":"listening"` line announces.
struct Listening {
    at: (Transport, SocketAddr),
    /// The listener speaks the PROXY protocol.
    proxied: bool,
}

/// `Some` for a `"message":"listening"` line; an error for one whose fields
/// are not what the harness relies on.
fn parse_listening(line: &str) -> Result<Option<Listening>, String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else { return Ok(None) };
    if value["message"] != "listening" {
        return Ok(None);
    }
    let transport = match value["transport"].as_str() {
        Some("udp") => Transport::Udp,
        Some("tcp") => Transport::Tcp,
        Some("tls") => Transport::Tls,
        other => return Err(format!("\"listening\" line with transport {other:?}: {line}")),
    };
    let addr = value["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("\"listening\" line without a usable addr: {line}"))?;
    Ok(Some(Listening { at: (transport, addr), proxied: value["proxy_protocol"] == true }))
}

/// Every JSON log line whose message is `message`.
pub fn logged(lines: &[String], message: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["message"] == message)
        .collect()
}

/// The count `field` of a log line, failing the test when it is not one.
pub fn count(value: &serde_json::Value, field: &str) -> u64 {
    value[field].as_u64().unwrap_or_else(|| panic!("{field} is a count in {value}"))
}

/// The JSON object of the last stderr line whose message is `message`.
pub fn find_log(lines: &[String], message: &str) -> Option<serde_json::Value> {
    lines
        .iter()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["message"] == message)
}

// ---------------------------------------------------------------------------
// STUN messages

/// A Binding request with a fresh transaction ID, optionally with FINGERPRINT.
pub fn binding_request(fingerprint: bool) -> (TransactionId, Vec<u8>) {
    request_with(Method::BINDING, |w| {
        if fingerprint {
            w.fingerprint();
        }
    })
}

/// A request of `method` with a fresh transaction ID; `build` adds attributes.
pub fn request_with(method: Method, build: impl FnOnce(&mut MessageWriter<'_>)) -> (TransactionId, Vec<u8>) {
    message_with(MessageType::new(method, Class::Request), build)
}

/// A message of `message_type` with a fresh transaction ID.
pub fn message_with(message_type: MessageType, build: impl FnOnce(&mut MessageWriter<'_>)) -> (TransactionId, Vec<u8>) {
    let tid = TransactionId::random();
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, message_type, tid);
    build(&mut w);
    w.finish();
    (tid, buf)
}

/// The transaction ID of anything that looks like a STUN header.
pub fn header_tid(bytes: &[u8]) -> Option<TransactionId> {
    let id: [u8; 12] = bytes.get(8..HEADER_LEN)?.try_into().ok()?;
    Some(TransactionId(id))
}

/// Parses a response, failing the test with the bytes when it is not a
/// well-formed RFC 8489 message.
pub fn parse_response(bytes: &[u8]) -> Message<'_> {
    let message = Message::parse(bytes).unwrap_or_else(|e| panic!("malformed response ({e}): {bytes:02x?}"));
    assert_eq!(bytes[4..8], MAGIC_COOKIE.to_be_bytes(), "a response carries the magic cookie");
    message
}

/// Checks the RFC 8489 §6.3.1 success response to a Binding request with
/// `tid` and returns its XOR-MAPPED-ADDRESS.
pub fn assert_binding_success(response: &Message<'_>, tid: TransactionId) -> SocketAddr {
    assert_eq!(response.message_type(), MessageType::new(Method::BINDING, Class::Success), "Binding success");
    assert_eq!(response.transaction_id(), tid, "the response echoes the transaction ID");
    let value = response.attribute(AttrType::XOR_MAPPED_ADDRESS).expect("a Binding success carries XOR-MAPPED-ADDRESS");
    attr::read_xor_address(value, &tid).expect("XOR-MAPPED-ADDRESS is well-formed")
}

/// The code of an error response's ERROR-CODE.
pub fn error_code(response: &Message<'_>) -> u16 {
    assert_eq!(response.class(), Class::Error, "an error response");
    let value = response.attribute(AttrType::ERROR_CODE).expect("an error response carries ERROR-CODE");
    attr::read_error_code(value).expect("ERROR-CODE is well-formed").code
}

// ---------------------------------------------------------------------------
// Clients

/// A UDP client on a loopback address, talking to one server address.
/// It remembers the transactions it has completed, so a late duplicate answer
/// to a retransmitted request is recognised and not taken for an answer to
/// something that must get none.
pub struct UdpClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    answered: HashSet<[u8; 12]>,
}

/// Retransmission waits for [`UdpClient::transact`]: RFC 8489's doubling,
/// stretched for a noisy machine (about 9 s in all).
const RETRANSMIT_WAITS: [Duration; 5] = [
    Duration::from_millis(300),
    Duration::from_millis(600),
    Duration::from_millis(1200),
    Duration::from_millis(2400),
    Duration::from_millis(4800),
];

impl UdpClient {
    /// A client socket on the loopback address of `server`'s family.
    pub fn new(server: SocketAddr) -> Self {
        let local = if server.is_ipv4() { LOOPBACK_V4 } else { LOOPBACK_V6 };
        let socket = UdpSocket::bind(local).unwrap_or_else(|e| panic!("binding {local}: {e}"));
        Self { socket, server, answered: HashSet::new() }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound socket has an address")
    }

    pub fn send(&self, datagram: &[u8]) {
        let sent =
            self.socket.send_to(datagram, self.server).unwrap_or_else(|e| panic!("send_to {}: {e}", self.server));
        assert_eq!(sent, datagram.len(), "whole datagram sent");
    }

    /// Sends `request` and returns the answer with its transaction ID,
    /// retransmitting as RFC 8489 §6.2.1 does. Anything else that arrives
    /// first (not a duplicate of an earlier answer) fails the test: the
    /// server answers one socket's datagrams in order, so whatever came
    /// before this answer was an answer to something sent before it.
    pub fn transact(&mut self, request: &[u8]) -> Vec<u8> {
        let tid = header_tid(request).expect("a request has a header");
        let mut buf = vec![0u8; 65536];
        for wait in RETRANSMIT_WAITS {
            self.send(request);
            let deadline = clock::now() + wait;
            if let Some(datagram) = self.recv_until(deadline, &mut buf) {
                assert_eq!(
                    header_tid(datagram),
                    Some(tid),
                    "unexpected datagram before the answer to {tid:02x?}: {datagram:02x?}"
                );
                self.answered.insert(tid.0);
                return datagram.to_vec();
            }
        }
        let total: Duration = RETRANSMIT_WAITS.iter().sum();
        panic!("no answer from {} to {tid:02x?} within {total:?}", self.server);
    }

    /// Sends a good Binding request and checks the answer: proof that the
    /// server is alive, and (see [`UdpClient::transact`]) that nothing sent
    /// before it on this socket was answered.
    pub fn assert_binding_works(&mut self) {
        let (tid, request) = binding_request(false);
        let answer = self.transact(&request);
        let mapped = assert_binding_success(&parse_response(&answer), tid);
        assert_eq!(mapped, self.local_addr(), "XOR-MAPPED-ADDRESS is the client's address");
    }

    /// Fails the test if anything (other than a late duplicate of an
    /// earlier answer) arrives within `wait`.
    pub fn assert_silence(&mut self, wait: Duration, what: &str) {
        let deadline = clock::now() + wait;
        let mut buf = vec![0u8; 65536];
        if let Some(datagram) = self.recv_until(deadline, &mut buf) {
            panic!("{what}: expected no answer, got {} bytes: {datagram:02x?}", datagram.len());
        }
    }

    /// The next datagram from the server before `deadline` that is not a
    /// duplicate answer. Datagrams from other sources fail the test.
    fn recv_until<'b>(&self, deadline: Instant, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        for _ in 0..MAX_TURNS {
            let now = clock::now();
            if now >= deadline {
                return None;
            }
            self.socket.set_read_timeout(Some(deadline - now)).expect("set_read_timeout");
            match self.socket.recv_from(buf) {
                Ok((n, from)) => {
                    assert_eq!(from, self.server, "answers come from the address the request was sent to");
                    let duplicate = header_tid(&buf[..n]).is_some_and(|tid| self.answered.contains(&tid.0));
                    if !duplicate {
                        return Some(&buf[..n]);
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("recv_from: {e}"),
            }
        }
        None
    }
}

/// A TCP client: frames are cut from the stream by the STUN length.
pub struct TcpClient {
    pub stream: TcpStream,
    inbuf: StreamFramer,
}

/// What reading a frame from a TCP connection found.
#[derive(Debug)]
pub enum TcpRead {
    Frame(Vec<u8>),
    /// Nothing within the wait.
    Nothing,
    /// The server closed the connection (EOF or reset), with any bytes that
    /// were left unframed.
    Closed(Vec<u8>),
}

impl TcpClient {
    pub fn connect(server: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&server, ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {server}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Self { stream, inbuf: StreamFramer::new() }
    }

    /// Like [`TcpClient::connect`], from the local address `local` (another
    /// loopback address, say, to be told apart from 127.0.0.1).
    pub fn connect_from(local: IpAddr, server: SocketAddr) -> Self {
        let socket = tern::client::ClientSocket::open_from(Some(local), server, Transport::Tcp, ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting from {local} to {server}: {e}"));
        let (stream, inbuf) = socket.into_tcp().expect("a TCP socket");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Self { stream, inbuf }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("connected socket has an address")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|e| panic!("writing {} bytes: {e}", bytes.len()));
    }

    /// Reads until a whole STUN frame, EOF, or `wait` has passed.
    pub fn read(&mut self, wait: Duration) -> TcpRead {
        let deadline = clock::now() + wait;
        for _ in 0..MAX_TURNS {
            let buffered = self.inbuf.buffered();
            if buffered.len() >= 4 {
                assert!(buffered[0] < 0x40, "the server sent a non-STUN frame: {buffered:02x?}");
                let frame = self.inbuf.next_frame().unwrap_or_else(|e| panic!("the server lost the framing: {e}"));
                if let Some(frame) = frame {
                    return TcpRead::Frame(frame.to_vec());
                }
            }
            let now = clock::now();
            if now >= deadline {
                return TcpRead::Nothing;
            }
            self.stream.set_read_timeout(Some(deadline - now)).expect("set_read_timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return TcpRead::Closed(self.inbuf.take_unframed()),
                Ok(n) => self.inbuf.extend(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
                    return TcpRead::Closed(self.inbuf.take_unframed());
                }
                Err(e) => panic!("reading from the server: {e}"),
            }
        }
        TcpRead::Nothing
    }

    /// The next frame; fails the test if none arrives within [`ANSWER_TIMEOUT`].
    pub fn read_frame(&mut self) -> Vec<u8> {
        match self.read(ANSWER_TIMEOUT) {
            TcpRead::Frame(frame) => frame,
            other => panic!("expected a STUN frame from the server, got {other:?}"),
        }
    }

    /// Sends `request` and returns the next frame, which must answer it.
    pub fn transact(&mut self, request: &[u8]) -> Vec<u8> {
        self.send(request);
        let frame = self.read_frame();
        assert_eq!(header_tid(&frame), header_tid(request), "the next frame answers the request");
        frame
    }

    pub fn assert_binding_works(&mut self) {
        let (tid, request) = binding_request(false);
        let answer = self.transact(&request);
        let mapped = assert_binding_success(&parse_response(&answer), tid);
        assert_eq!(mapped, self.local_addr(), "XOR-MAPPED-ADDRESS is the client's address");
    }
}

/// A small deterministic generator (SplitMix64) for reproducible junk: the
/// same seed gives the same bytes whatever the `rand` version.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let random = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&random[..chunk.len()]);
        }
    }
}

/// The first port of `len` relay ports outside the kernel's ephemeral range,
/// so no client socket on the machine can take one while a test counts them.
pub fn relay_range_outside_ephemeral(len: u16) -> u16 {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    let (low, high) = (bounds.next().unwrap_or(32768), bounds.next().unwrap_or(60999));
    if u32::from(high) + u32::from(len) < 65535 { high + 1 } else { low.saturating_sub(len + 1000) }
}
