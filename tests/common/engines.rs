//! Real database engines for the store tests, each started in a temporary
//! directory of its own and stopped by PID when dropped: PostgreSQL
//! (`initdb` and `pg_ctl` from Debian's postgresql, on a Unix socket,
//! run as `nobody` when the tests run as root, since PostgreSQL refuses
//! root), Redis (`redis-server` on a loopback port, with a password), and
//! coturn 4.17.1's `turnadmin` (built by `../shared/peers/build-coturn.sh`).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{COMMAND_TIMEOUT, STOP_TIMEOUT, run_bounded, wait_bounded};

/// Where Debian installs each PostgreSQL version's programs.
const POSTGRES_LIB: &str = "/usr/lib/postgresql";
/// The port in the socket's name; the socket lives in a directory of the
/// test's own, so it cannot clash with another server.
const POSTGRES_PORT: u16 = 5432;
/// How long an engine may take to start accepting connections.
const ENGINE_START: Duration = Duration::from_secs(30);
/// The password of every test Redis.
pub const REDIS_PASSWORD: &str = "redis-test-pass";

fn require(present: bool, what: &str, how: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("TERN_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("{what} is missing, and TERN_REQUIRE_INTEROP=1 makes the store tests mandatory ({how})");
    }
    eprintln!("skipping: {what} is missing ({how})");
    false
}

/// A fresh directory under the system's temporary directory (short enough
/// for a Unix socket path, and reachable by `nobody`).
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tern-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Whether the tests run as root, when PostgreSQL must run as someone else.
fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

fn id_of(flag: &str) -> u32 {
    let output = Command::new("id").args([flag, "nobody"]).output().expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("nobody has numeric ids")
}

fn checked(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The newest installed PostgreSQL's programs (Debian's `postgresql`
/// package installs one version under [`POSTGRES_LIB`]).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_LIB)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL server on a Unix socket in a temporary directory, with a
/// superuser `tern` and trust authentication on the socket.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    as_nobody: bool,
    /// The loopback TCP port it also serves TLS on, if any.
    tls_port: Option<u16>,
}

impl Postgres {
    /// Starts one, or `None` (and a notice) where PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Starts one that also serves TLS on a loopback TCP port with this
    /// certificate and key.
    pub fn start_with_tls(cert: &Path, key: &Path) -> Option<Self> {
        Self::start_with(Some((cert, key)))
    }

    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Option<Self> {
        let bin = postgres_bin();
        if !require(bin.is_some(), "PostgreSQL", "apt-get install postgresql") {
            return None;
        }
        let bin = bin.expect("checked just above");
        let dir = temp_dir("pg");
        let as_nobody = is_root();
        if as_nobody {
            std::os::unix::fs::chown(&dir, Some(id_of("-u")), Some(id_of("-g"))).expect("chown to nobody");
        }
        let mut tls_port = None;
        if let Some((cert, key)) = tls {
            // PostgreSQL reads its key only when its own user owns it, unreadable to others.
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let path = dir.join(to);
                std::fs::copy(from, &path).expect("copying the certificate");
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
                if as_nobody {
                    std::os::unix::fs::chown(&path, Some(id_of("-u")), Some(id_of("-g"))).expect("chown to nobody");
                }
            }
            tls_port = Some(
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port").local_addr().expect("bound").port(),
            );
        }
        let postgres = Self { bin, dir, as_nobody, tls_port };
        checked(
            run_bounded(
                &mut postgres.command("initdb", &["-D", &postgres.data(), "-U", "tern", "--auth=trust", "-E", "UTF8"]),
                Duration::from_secs(120),
            ),
            "initdb",
        );
        postgres.resume();
        Some(postgres)
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_nobody {
            let mut command = Command::new("setpriv");
            command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(&self.dir);
        command
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn socket_dir(&self) -> String {
        self.dir.display().to_string()
    }

    /// tern's URL of the server.
    pub fn url(&self) -> String {
        format!("postgresql:///postgres?host={}&port={}&user=tern", self.socket_dir(), self.port())
    }

    /// The port in the socket's name (the TCP port too, with TLS).
    fn port(&self) -> u16 {
        self.tls_port.unwrap_or(POSTGRES_PORT)
    }

    /// libpq's connection string of the server, as turnadmin takes it.
    pub fn conninfo(&self) -> String {
        format!("host={} port={} dbname=postgres user=tern", self.socket_dir(), self.port())
    }

    /// Starts the server again after [`Postgres::stop`].
    pub fn resume(&self) {
        let options = match self.tls_port {
            None => format!("-k {} -c listen_addresses= -p {POSTGRES_PORT}", self.socket_dir()),
            Some(port) => format!(
                "-k {dir} -c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c ssl_cert_file={dir}/server.crt \
                 -c ssl_key_file={dir}/server.key",
                dir = self.socket_dir()
            ),
        };
        let log = self.dir.join("postgres.log").display().to_string();
        let output = run_bounded(
            &mut self.command("pg_ctl", &["start", "-w", "-t", "60", "-D", &self.data(), "-l", &log, "-o", &options]),
            ENGINE_START * 2,
        );
        if !output.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("pg_ctl start failed: {output:?}\n{log}");
        }
    }

    /// Stops the server (fast shutdown: connections are closed).
    pub fn stop(&self) {
        checked(
            run_bounded(&mut self.command("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &self.data()]), ENGINE_START),
            "pg_ctl stop",
        );
    }

    /// Runs SQL through `psql`.
    pub fn psql(&self, sql: &str) -> String {
        let output = checked(
            run_bounded(
                &mut self.command(
                    "psql",
                    &[
                        "-h",
                        &self.socket_dir(),
                        "-p",
                        &self.port().to_string(),
                        "-U",
                        "tern",
                        "-d",
                        "postgres",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-At",
                        "-c",
                        sql,
                    ],
                ),
                COMMAND_TIMEOUT,
            ),
            "psql",
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid_file = self.dir.join("data/postmaster.pid");
        if pid_file.exists() {
            let _ = run_bounded(
                &mut self.command("pg_ctl", &["stop", "-w", "-m", "immediate", "-D", &self.data()]),
                STOP_TIMEOUT * 3,
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server on a loopback port, with [`REDIS_PASSWORD`] and no
/// persistence.
pub struct Redis {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one, or `None` (and a notice) where redis-server is missing.
    pub fn start() -> Option<Self> {
        if !require(super::find_on_path("redis-server").is_some(), "redis-server", "apt-get install redis-server") {
            return None;
        }
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port").local_addr().expect("bound").port();
        let mut redis = Self { dir: temp_dir("redis"), port, child: None };
        redis.resume();
        Some(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// tern's URL of the server (the password comes from elsewhere).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs a command through `redis-cli`, which must succeed; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = checked(
            run_bounded(
                Command::new("redis-cli")
                    .args(["-p", &self.port.to_string(), "--no-auth-warning", "-a", REDIS_PASSWORD])
                    .args(args),
                COMMAND_TIMEOUT,
            ),
            "redis-cli",
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// coturn's connection string of the server.
    pub fn conninfo(&self) -> String {
        format!("ip=127.0.0.1 port={} dbname=0 password={REDIS_PASSWORD} connect_timeout=10", self.port)
    }

    /// Starts the server (again) on its port.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", REDIS_PASSWORD, "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = tern::io::clock::now() + ENGINE_START;
        for _ in 0..3000 {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return;
            }
            assert!(tern::io::clock::now() < deadline, "redis-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    /// Stops the server by its PID.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, STOP_TIMEOUT);
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// coturn 4.17.1's turnadmin: `TERN_TURNADMIN`, or where build-coturn.sh
/// puts it; `None` (and a notice) where it is not built.
pub fn turnadmin() -> Option<PathBuf> {
    let path = std::env::var_os("TERN_TURNADMIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/coturn-4.17.1/bin/turnadmin"));
    require(path.exists(), "coturn 4.17.1's turnadmin", "bash ../shared/peers/build-coturn.sh").then_some(path)
}

/// Runs turnadmin with `args`, which must succeed; its standard output.
pub fn run_turnadmin(turnadmin: &Path, args: &[&str]) -> String {
    let output = checked(run_bounded(Command::new(turnadmin).args(args), COMMAND_TIMEOUT), "turnadmin");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
