//! Three network namespaces made by a test, a client, a router and a server,
//! joined by two veth pairs, for tests that need a real NAT or firewall
//! (nftables rules inside a namespace):
//!
//! ```text
//!   client ns ── router ns (forwards; nft rules of the test) ── server ns
//! ```
//!
//! Needs root, `ip` and `nft`: [`Topology::build`] says why it cannot, and
//! the test prints that and returns, as for any machine without them. The
//! names carry this process's ID and a counter, so parallel tests and runs
//! cannot collide, and the addresses exist only inside the namespaces.
//! Dropping the [`Topology`] deletes them, veth pairs included.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{COMMAND_TIMEOUT, STOP_TIMEOUT, run_bounded, scratch_file, tern_bin, wait_bounded};

/// How many times [`NamespacedServer::start`] asks the server whether it is up.
const READY_ATTEMPTS: usize = 40;

/// The addresses of a topology, each `IP/PREFIX`.
pub struct Plan<'a> {
    pub client: &'a str,
    /// The router's address on the client side, the client's gateway; more
    /// addresses on that side (a public address it forwards) may follow.
    pub router_client: &'a [&'a str],
    /// The router's address on the server side, the server's gateway.
    pub router_server: &'a str,
    pub server: &'a [&'a str],
}

pub struct Topology {
    pub client: String,
    pub router: String,
    pub server: String,
    /// The router's interface towards the client.
    pub downlink: String,
    /// The router's interface towards the server.
    pub uplink: String,
}

/// Runs a command to completion (bounded) and returns its stdout, or its
/// stderr as the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = run_bounded(Command::new(program).args(args), COMMAND_TIMEOUT);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("{program} {args:?}: {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// What to install, when `ip` or `nft` is missing.
pub fn tools_missing() -> Option<String> {
    let missing: Vec<&str> = ["ip", "nft"].into_iter().filter(|tool| super::find_on_path(tool).is_none()).collect();
    (!missing.is_empty()).then(|| format!("{missing:?} not installed (apt-get install iproute2 nftables)"))
}

fn ip_only(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

impl Topology {
    /// Builds the namespaces with `plan`'s addresses, or says why it cannot.
    pub fn build(plan: &Plan<'_>) -> Result<Self, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!("{}{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let names = ["c", "r", "s"].map(|role| format!("tern-{id}-{role}"));
        run("ip", &["netns", "add", &names[0]])?;
        let topology = Self {
            client: names[0].clone(),
            router: names[1].clone(),
            server: names[2].clone(),
            downlink: format!("tn{id}b"),
            uplink: format!("tn{id}d"),
        };
        run("ip", &["netns", "add", &topology.router])?;
        run("ip", &["netns", "add", &topology.server])?;
        let (a, b, d, e) = (format!("tn{id}a"), topology.downlink.clone(), topology.uplink.clone(), format!("tn{id}e"));
        let (c, r, s) = (topology.client.as_str(), topology.router.as_str(), topology.server.as_str());
        let mut steps: Vec<Vec<&str>> = vec![
            vec!["link", "add", &a, "netns", c, "type", "veth", "peer", "name", &b, "netns", r],
            vec!["link", "add", &d, "netns", r, "type", "veth", "peer", "name", &e, "netns", s],
            vec!["-n", c, "link", "set", "lo", "up"],
            vec!["-n", r, "link", "set", "lo", "up"],
            vec!["-n", s, "link", "set", "lo", "up"],
            vec!["-n", c, "addr", "add", plan.client, "dev", &a],
            vec!["-n", c, "link", "set", &a, "up"],
        ];
        for cidr in plan.router_client {
            steps.push(vec!["-n", r, "addr", "add", cidr, "dev", &b]);
        }
        steps.extend([
            vec!["-n", r, "link", "set", &b, "up"],
            vec!["-n", r, "addr", "add", plan.router_server, "dev", &d],
            vec!["-n", r, "link", "set", &d, "up"],
        ]);
        for cidr in plan.server {
            steps.push(vec!["-n", s, "addr", "add", cidr, "dev", &e]);
        }
        steps.push(vec!["-n", s, "link", "set", &e, "up"]);
        for step in steps {
            run("ip", &step)?;
        }
        let client_gateway = ip_only(plan.router_client.first().ok_or("the router needs a client-side address")?);
        run("ip", &["-n", c, "route", "add", "default", "via", client_gateway])?;
        run("ip", &["-n", s, "route", "add", "default", "via", ip_only(plan.router_server)])?;
        run("ip", &["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(topology)
    }

    /// Replaces the nftables ruleset of namespace `namespace` with `rules`.
    pub fn nft(&self, namespace: &str, rules: &str) -> Result<(), String> {
        let path = scratch_file("rules.nft", &format!("flush ruleset\n{rules}"));
        run("ip", &["netns", "exec", namespace, "nft", "-f", &path.to_string_lossy()]).map(drop)
    }

    /// Runs `tern ARGS` in the client namespace to completion; its output.
    pub fn tern_in_client(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["netns", "exec", &self.client, tern_bin()];
        full.extend_from_slice(args);
        run_bounded(Command::new("ip").args(&full), COMMAND_TIMEOUT)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in [&self.client, &self.router, &self.server] {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// `tern serve` inside a namespace; killed by PID on drop.
pub struct NamespacedServer(Child);

impl NamespacedServer {
    /// Starts `tern serve ARGS` in `namespace` and waits until `tern stun`
    /// run there gets an answer from `probe` (an `IP:PORT` it listens on).
    pub fn start(namespace: &str, args: &[&str], probe: &str) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, tern_bin(), "serve", "--log-level", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tern in {namespace}: {e}"));
        let server = Self(child);
        let up = (0..READY_ATTEMPTS)
            .any(|_| run("ip", &["netns", "exec", namespace, tern_bin(), "stun", probe, "--timeout", "250ms"]).is_ok());
        assert!(up, "tern did not answer on {probe} in {namespace}");
        server
    }
}

impl Drop for NamespacedServer {
    fn drop(&mut self) {
        // `ip netns exec` execs tern, so this PID is tern's, and not reaped yet.
        let _ = self.0.kill();
        let _ = wait_bounded(&mut self.0, STOP_TIMEOUT);
    }
}
