//! `tern check` and `tern serve` start-up errors, through the real binary:
//! every mistake stops tern with one line naming the file, the key and the
//! problem, and exit status 1.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{COMMAND_TIMEOUT, TernServer, run_bounded, run_tern, scratch_file, tern_command};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `tern check ARGS`, which must succeed; returns the printed TOML without
/// its first (comment) line, after checking that line.
fn check_ok(args: &[&str], source: &str) -> String {
    let mut full = vec!["check"];
    full.extend_from_slice(args);
    let output = run_tern(&full);
    assert!(output.status.success(), "tern {full:?}: {output:?}");
    assert_eq!(stderr(&output), "", "a valid configuration prints nothing on stderr");
    let text = stdout(&output);
    let (first, body) = text.split_once('\n').expect("more than one line");
    assert_eq!(first, format!("# {source}: valid; effective settings:"));
    body.to_owned()
}

/// Writes `contents` to a scratch file and runs `tern check --config` on it,
/// which must fail with exit status 1 and print one line on stderr and
/// nothing on stdout. Returns the file's path as tern names it, and the line.
fn check_fails(name: &str, contents: &str) -> (String, String) {
    let path = scratch_file(name, contents);
    let path = path.to_str().expect("utf-8 path").to_owned();
    let output = run_tern(&["check", "--config", &path]);
    (path, single_error_line(&output))
}

fn single_error_line(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "exit status 1: {output:?}");
    assert_eq!(stdout(output), "", "nothing on stdout");
    let text = stderr(output);
    let mut lines = text.lines();
    let line = lines.next().unwrap_or_else(|| panic!("an error on stderr: {output:?}")).to_owned();
    assert_eq!(lines.next(), None, "one line on stderr: {text:?}");
    line
}

fn config_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "config/ holds example files");
    files
}

#[test]
fn every_bundled_config_file_is_valid() {
    for file in config_files() {
        let path = file.to_str().expect("utf-8 path");
        let body = check_ok(&["--config", path], path);
        assert!(body.contains("listen = ["), "{path}: {body}");
        assert!(body.contains("[log]"), "{path}: {body}");
    }
}

#[test]
fn printed_settings_round_trip() {
    let mut cases: Vec<Vec<String>> = config_files()
        .into_iter()
        .map(|file| vec!["--config".to_owned(), file.to_str().expect("utf-8 path").to_owned()])
        .collect();
    cases.push(Vec::new());
    let flags = [
        "--listen",
        "127.0.0.1:5000",
        "--listen",
        "[::1]:5001",
        "--realm",
        "example.org",
        "--workers",
        "3",
        "--log-level",
        "debug",
        "--log-format",
        "json",
    ];
    cases.push(flags.iter().map(|s| (*s).to_owned()).collect());
    let file = scratch_file("all-keys.toml", "rfc3489 = true\nsoftware = \"tern test\"\nreason_phrases = true\n");
    cases.push(vec!["--config".to_owned(), file.to_str().expect("utf-8 path").to_owned()]);

    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let source = match args.as_slice() {
            ["--config", path] => (*path).to_owned(),
            _ => "embedded defaults".to_owned(),
        };
        let printed = check_ok(&args, &source);
        let again_file = scratch_file("printed.toml", &printed);
        let again_path = again_file.to_str().expect("utf-8 path");
        let again = check_ok(&["--config", again_path], again_path);
        assert_eq!(again, printed, "tern check {args:?}: the printed settings read back to themselves");
    }
}

#[test]
fn flags_override_the_file() {
    let file = scratch_file("base.toml", "listen = [\"127.0.0.1:3478\"]\nrealm = \"file\"\nworkers = 1\n");
    let path = file.to_str().expect("utf-8 path");
    let body = check_ok(
        &["--config", path, "--listen", "[::1]:4000", "--realm", "flag", "--workers", "2", "--log-level", "warn"],
        path,
    );
    assert!(body.contains("listen = [\"[::1]:4000\"]\n"), "{body}");
    assert!(body.contains("realm = \"flag\"\n"), "{body}");
    assert!(body.contains("workers = 2\n"), "{body}");
    assert!(body.contains("level = \"warn\"\n"), "{body}");
}

#[test]
fn unknown_top_level_key() {
    let (path, line) = check_fails("unknown.toml", "lisen = [\"127.0.0.1:3478\"]\n");
    assert!(line.starts_with(&format!("tern: {path}: key `lisen`: unknown field `lisen`")), "{line}");
    assert!(line.contains("`listen`"), "the valid keys are suggested: {line}");
    assert!(line.ends_with("(line 1, column 1)"), "{line}");
}

#[test]
fn unknown_key_in_the_log_table() {
    let (path, line) = check_fails("unknown-log.toml", "[log]\nlevle = \"info\"\n");
    assert!(line.starts_with(&format!("tern: {path}: key `log.levle`: unknown field `levle`")), "{line}");
    assert!(line.contains("`level`"), "{line}");
    assert!(line.ends_with("(line 2, column 1)"), "{line}");
}

#[test]
fn wrong_type() {
    let (path, line) = check_fails("type.toml", "workers = \"four\"\n");
    assert!(line.starts_with(&format!("tern: {path}: key `workers`: invalid type: string \"four\"")), "{line}");
    assert!(line.contains("(line 1, column"), "{line}");
}

#[test]
fn bad_enum_value() {
    let (path, line) = check_fails("enum.toml", "[log]\nlevel = \"loud\"\n");
    assert!(line.starts_with(&format!("tern: {path}: key `log.level`: unknown variant `loud`")), "{line}");
    for level in ["error", "warn", "info", "debug", "trace"] {
        assert!(line.contains(&format!("`{level}`")), "the accepted values are listed: {line}");
    }
    assert!(line.contains("(line 2, column"), "{line}");
}

#[test]
fn bad_listen_address() {
    let (path, line) = check_fails("listen.toml", "listen = [\"localhost\"]\n");
    assert_eq!(
        line,
        format!(
            "tern: {path}: key `listen[0]`: \"localhost\" is not an IP:port address (like 0.0.0.0:3478 or [::]:3478)"
        )
    );
    // The index names the bad entry.
    let (path, line) = check_fails("listen2.toml", "listen = [\"127.0.0.1:3478\", \"127.0.0.1\"]\n");
    assert!(line.starts_with(&format!("tern: {path}: key `listen[1]`: \"127.0.0.1\" is not")), "{line}");
}

#[test]
fn empty_listen_list() {
    let (path, line) = check_fails("empty-listen.toml", "listen = []\n");
    assert_eq!(line, format!("tern: {path}: key `listen`: needs at least one address"));
}

#[test]
fn empty_realm() {
    let (path, line) = check_fails("empty-realm.toml", "realm = \"\"\n");
    assert_eq!(line, format!("tern: {path}: key `realm`: must not be empty"));
}

#[test]
fn too_many_workers() {
    let (path, line) = check_fails("workers.toml", "workers = 5000\n");
    assert_eq!(line, format!("tern: {path}: key `workers`: 5000 is more than the maximum of 1024"));
}

#[test]
fn toml_syntax_error_gives_the_line() {
    let (path, line) = check_fails("syntax.toml", "realm = \"tern\"\nworkers = \n");
    assert!(line.starts_with(&format!("tern: {path}: ")), "{line}");
    assert!(!line.contains("key `"), "a syntax error is not about a key: {line}");
    assert!(line.contains("(line 2, column"), "{line}");

    let (path, line) = check_fails("unterminated.toml", "# comment\n\nrealm = \"unterminated\n");
    assert!(line.starts_with(&format!("tern: {path}: ")), "{line}");
    assert!(line.contains("(line 3, column"), "{line}");
}

#[test]
fn missing_config_file_is_named() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-dir/tern.toml");
    let path = path.to_str().expect("utf-8 path");
    let line = single_error_line(&run_tern(&["check", "--config", path]));
    assert!(line.starts_with(&format!("tern: cannot read config file {path}: ")), "{line}");
    assert!(line.contains("No such file or directory"), "{line}");
}

#[test]
fn bad_flag_value_names_the_flag() {
    let output = run_tern(&["check", "--listen", "nonsense"]);
    // clap reports usage errors itself, with its conventional exit status 2
    // (not the 1 of configuration errors).
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(stdout(&output), "");
    let text = stderr(&output);
    assert!(text.starts_with("error: invalid value 'nonsense' for '--listen <ADDR>'"), "{text}");
    assert!(text.contains("is not an IP:port address"), "{text}");

    let output = run_tern(&["check", "--workers", "many"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("'--workers <N>'"), "{output:?}");
}

#[test]
fn bad_flag_values_checked_by_tern() {
    let line = single_error_line(&run_tern(&["check", "--workers", "5000"]));
    assert_eq!(line, "tern: command line: key `--workers`: 5000 is more than the maximum of 1024");
    let line = single_error_line(&run_tern(&["check", "--realm", ""]));
    assert_eq!(line, "tern: command line: key `--realm`: must not be empty");
}

/// Runs `tern serve ARGS` expecting it to fail at start-up, and returns
/// its error line. A server that starts instead is killed after the bound.
fn serve_fails(args: &[&str]) -> String {
    let mut full = vec!["serve", "--log-format", "json"];
    full.extend_from_slice(args);
    let output = run_bounded(&mut tern_command(&full), COMMAND_TIMEOUT);
    assert_eq!(output.status.code(), Some(1), "tern {full:?} exits 1: {output:?}");
    let text = stderr(&output);
    assert!(!text.contains("\"listening\""), "it fails before listening: {text}");
    text.lines().find(|l| l.starts_with("tern: ")).unwrap_or_else(|| panic!("an error line: {text}")).to_owned()
}

#[test]
fn serve_with_a_bad_config_exits_before_listening() {
    let file = scratch_file("serve-bad.toml", "realm = \"\"\n");
    let path = file.to_str().expect("utf-8 path");
    let line = serve_fails(&["--config", path, "--listen", "127.0.0.1:0"]);
    assert_eq!(line, format!("tern: {path}: key `realm`: must not be empty"));

    // The harness sees the same failure.
    let failure = TernServer::try_start(&["--config", path]).err().expect("a bad config does not start");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1), "{failure}");
}

#[test]
fn serve_on_a_udp_port_in_use_names_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = taken.local_addr().expect("addr");
    let line = serve_fails(&["--listen", &addr.to_string(), "--workers", "1"]);
    assert!(line.starts_with(&format!("tern: cannot listen on udp {addr}: ")), "{line}");
    assert!(line.contains("in use"), "{line}");
}

#[test]
fn serve_on_a_tcp_port_in_use_names_the_address() {
    // A TCP port whose UDP twin is free, or tern would (rightly) report UDP
    // first: other tests hold ephemeral UDP ports at the same time.
    let (_taken, addr) = (0..100)
        .find_map(|_| {
            let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr: SocketAddr = taken.local_addr().expect("addr");
            UdpSocket::bind(addr).ok().map(|_| (taken, addr))
        })
        .expect("a TCP port with a free UDP twin");
    let line = serve_fails(&["--listen", &addr.to_string(), "--workers", "1"]);
    assert!(line.starts_with(&format!("tern: cannot listen on tcp {addr}: ")), "{line}");
    assert!(line.contains("in use"), "{line}");
}

#[test]
fn serve_on_an_address_another_tern_serves_fails() {
    let first = TernServer::start(&["--workers", "2"]);
    let addr = first.udp_addr().to_string();
    if let Ok(second) = TernServer::try_start(&["--listen", &addr, "--workers", "2"]) {
        panic!("a second tern started on {addr}, and the two now split its clients: {:?}", second.listening());
    }
}

/// The README starts the server with the bundled configuration: it must stay
/// valid, and it must serve TURN with its demo user on loopback.
#[test]
fn the_bundled_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.toml");
    let output = run_tern(&["check", "--config", path]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("# TURN relaying: on"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:3478"), "{stdout}");
}

/// The Debian package installs packaging/tern.toml as /etc/tern/tern.toml
/// (packaging/check-deb.sh checks the installed copy): it must stay valid,
/// and it must relay nothing until the operator gives it credentials.
#[test]
fn the_packaged_config_is_valid_and_relays_nothing() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/tern.toml");
    let body = check_ok(&["--config", path], path);
    assert!(body.contains("# TURN relaying: off"), "{body}");
    assert!(body.contains("allow_anonymous = false"), "{body}");
}
