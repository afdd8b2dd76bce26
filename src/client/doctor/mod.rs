//! `tern doctor`: checks a STUN/TURN deployment from the outside, as an
//! operator would by hand, one line per check with a fix for each failure.
//!
//! For every URL: DNS (A and AAAA), then for every address and transport a
//! STUN Binding (RFC 8489 §6), for `turns:` the certificate chain, host
//! name, expiry and ALPN (RFC 7443), an Allocate without credentials (which
//! must get 401, RFC 8656 §7.2), and with credentials an Allocate, a round
//! trip through the relay to a second socket of this client through a
//! permission (Send and Data indications) and through a channel
//! (ChannelData), and a delete. Once per server address it judges the
//! relayed address (private while clients reach the server at a public one
//! is the missing `external_ip` mistake) and whether a datagram a peer sends
//! first reaches the relay port (a firewall in front of the relay ports).
//! Then, over everything seen: the reflexive address, that strangers get
//! 401, the realm, that an expired REST credential is refused, SOFTWARE
//! leaking a version, and how much larger unauthenticated answers are than
//! the requests that caused them (reflection amplification).
//!
//! It is made of the bundled client's parts ([`stun`], [`turn`],
//! [`relay_probe`], [`tls`]), so it speaks to any TURN server. Every
//! network step is bounded by the timeout; DNS too, in a thread of its own
//! since the system resolver takes no deadline.

mod certificate;
mod report;
mod scope;
mod url;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

pub use report::{Check, Report, Status};
pub use url::{ServerUrl, UrlError};

use super::ClientSocket;
use super::credentials::RestCredential;
use super::relay_probe::{self, PROBE_CHANNEL, ProbePeer, RoundTripError};
use super::stun::{self, BindingResult};
use super::tls::TlsClient;
use super::turn::{self, Allocated, Credentials, TurnError, TurnSession};
use crate::io::clock;
use crate::proto::Transport;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, Message};
use certificate::TlsTarget;
use scope::Scope;

/// Addresses checked per host at most: a fleet behind round-robin DNS is
/// checked node by node, within reason.
const MAX_ADDRESSES: usize = 8;
/// Lifetime of the REST credential made from `--secret`.
const CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
/// How long before now the deliberately expired REST credential expired.
const EXPIRED_AGO: Duration = Duration::from_secs(3600);
/// An unauthenticated answer more than this many times the size of its
/// request is worth a warning: a minimal Binding answer is 1.6 times its
/// request, a lean 401 about 3 times.
const AMPLIFICATION_WARNING: f64 = 4.0;

/// Credentials to allocate with.
#[derive(Clone, Debug)]
pub enum DoctorCredentials {
    /// A long-term credential (`auth.users`).
    Password(Credentials),
    /// A TURN REST API secret: the doctor makes time-limited credentials for
    /// `user`, and one that has expired, which must be refused.
    Secret { user: String, secret: String },
}

/// What to check and how.
#[derive(Clone, Debug)]
pub struct Doctor {
    pub urls: Vec<ServerUrl>,
    /// Without them, allocation and relaying are skipped.
    pub credentials: Option<DoctorCredentials>,
    /// The realm the servers must announce.
    pub realm: Option<String>,
    /// Trust this PEM file instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// The name to check certificates against instead of each URL's host.
    pub sni: Option<String>,
    /// Bound on every network step.
    pub timeout: Duration,
}

/// One address over one transport.
#[derive(Clone, Copy)]
struct Endpoint {
    server: SocketAddr,
    transport: Transport,
}

/// Whether this allocation is the first on its server address (which
/// checks the relay ports), and whether that address's relayed address is
/// one peers can reach.
#[derive(Clone, Copy)]
struct RelayState {
    first: bool,
    reachable: bool,
}

/// A Binding answer.
struct Mapping {
    transport: Transport,
    server: SocketAddr,
    local: Option<IpAddr>,
    mapped: SocketAddr,
}

/// An answer to a request anyone may send.
struct Unauthenticated {
    what: &'static str,
    transport: Transport,
    request_len: usize,
    response: Vec<u8>,
}

/// How a server answered an Allocate without credentials.
enum Stranger {
    Challenged { realm: String },
    Allocated,
    Refused(String),
    Unanswered(String),
}

/// Where an allocation worked, to try the expired credential there.
struct Allocation {
    server: SocketAddr,
    transport: Transport,
    tls: Option<TlsClient>,
}

/// What the per-address checks leave for the summary.
#[derive(Default)]
struct Findings {
    mappings: Vec<Mapping>,
    unauthenticated: Vec<Unauthenticated>,
    strangers: Vec<(Transport, SocketAddr, Stranger)>,
    allocations: Vec<Allocation>,
    /// Server IPs whose relayed address and relay ports were checked, with
    /// whether the relayed address is one outside peers can reach.
    relays: HashMap<IpAddr, bool>,
    any_turn: bool,
}

impl Doctor {
    /// Runs every check; the report says how each went.
    pub fn run(&self) -> Report {
        let mut report = Report::default();
        let mut findings = Findings::default();
        let mut resolved: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for url in &self.urls {
            findings.any_turn |= url.turn;
            let ips = match resolved.get(&url.host) {
                Some(ips) => ips.clone(),
                None => {
                    let ips = self.dns(url, &mut report);
                    resolved.insert(url.host.clone(), ips.clone());
                    ips
                }
            };
            for ip in ips {
                for transport in &url.transports {
                    self.endpoint(url, SocketAddr::new(ip, url.port), *transport, &mut report, &mut findings);
                }
            }
        }
        self.summary(&findings, &mut report);
        report
    }

    fn dns(&self, url: &ServerUrl, report: &mut Report) -> Vec<IpAddr> {
        if let Some(ip) = url.host_ip() {
            report.push(Check::skip("dns", &url.host, format!("{ip} is an IP address: nothing to resolve")));
            return vec![ip];
        }
        let fix = format!("add an A record (and an AAAA record for IPv6 clients) for {}", url.host);
        let ips = match resolve_bounded(&url.host, url.port, self.timeout) {
            Ok(ips) if !ips.is_empty() => ips,
            Ok(_) => {
                report.push(Check::fail("dns", &url.host, "no address", fix));
                return Vec::new();
            }
            Err(e) => {
                report.push(Check::fail("dns", &url.host, format!("cannot resolve: {e}"), fix));
                return Vec::new();
            }
        };
        let list = |v4: bool| {
            let ips: Vec<String> = ips.iter().filter(|ip| ip.is_ipv4() == v4).map(IpAddr::to_string).collect();
            if ips.is_empty() { "none".to_owned() } else { ips.join(", ") }
        };
        let detail = format!("A {}; AAAA {}", list(true), list(false));
        if ips.iter().any(IpAddr::is_ipv4) {
            report.push(Check::ok("dns", &url.host, detail));
        } else {
            report.push(Check::warn(
                "dns",
                &url.host,
                detail,
                format!("clients without IPv6 cannot reach {}: add an A record", url.host),
            ));
        }
        ips.into_iter().take(MAX_ADDRESSES).collect()
    }

    /// The checks of one address over one transport.
    fn endpoint(
        &self,
        url: &ServerUrl,
        server: SocketAddr,
        transport: Transport,
        report: &mut Report,
        findings: &mut Findings,
    ) {
        let target = server.to_string();
        let tls = match transport {
            Transport::Tls => {
                let name = self.sni.as_deref().unwrap_or(&url.host);
                let checked = TlsTarget { addr: server, name, ca: self.tls_ca.clone(), timeout: self.timeout }.check();
                checked.checks.into_iter().for_each(|check| report.push(check));
                match checked.client {
                    Some(client) => Some(client),
                    None => return,
                }
            }
            Transport::Udp | Transport::Tcp => None,
        };
        let stun_check = format!("stun {transport}");
        let mut socket = match ClientSocket::connect(server, transport, tls.as_ref(), self.timeout) {
            Ok(socket) => socket,
            Err(e) => {
                report.push(Check::fail(
                    stun_check,
                    &target,
                    format!("cannot connect: {e}"),
                    unanswered(server, transport),
                ));
                return;
            }
        };
        let exchange = match stun::binding_exchange(&mut socket, self.timeout) {
            Ok(exchange) => exchange,
            Err(e) => {
                report.push(Check::fail(stun_check, &target, e.to_string(), unanswered(server, transport)));
                return;
            }
        };
        match exchange.result {
            BindingResult::Mapped { address, rtt } => {
                report.push(Check::ok(
                    stun_check,
                    &target,
                    format!("mapped address {address}, rtt {:.1} ms", rtt.as_secs_f64() * 1e3),
                ));
                let local = socket.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
                let local = local.or_else(|| local_ip_towards(server));
                findings.mappings.push(Mapping { transport, server, local, mapped: address });
                findings.unauthenticated.push(Unauthenticated {
                    what: "Binding",
                    transport,
                    request_len: exchange.request_len,
                    response: exchange.response,
                });
            }
            BindingResult::Timeout => {
                let detail =
                    format!("no answer to a Binding request within {}", humantime::format_duration(self.timeout));
                report.push(Check::fail(stun_check, &target, detail, unanswered(server, transport)));
                return;
            }
            BindingResult::ErrorResponse { code, reason } => {
                report.push(Check::fail(
                    stun_check,
                    &target,
                    format!("a Binding request got {code} {reason}"),
                    "a STUN server answers Binding requests without credentials (RFC 8489 §6.3.1): is this port \
                     tern's (listen)?",
                ));
                return;
            }
            BindingResult::Invalid(why) => {
                report.push(Check::fail(
                    stun_check,
                    &target,
                    format!("invalid Binding response: {why}"),
                    "something other than a STUN server answers on this port",
                ));
                return;
            }
        }
        if !url.turn {
            return;
        }
        let socket = self.stranger(socket, server, transport, findings);
        let Some(credentials) = self.allocation_credentials() else {
            report.push(Check::skip(
                format!("allocate {transport}"),
                &target,
                "no credentials: give --user with --pass or --secret to check allocation and relaying",
            ));
            return;
        };
        self.relay(socket, Endpoint { server, transport }, tls, credentials, report, findings);
    }

    /// An Allocate without credentials on `socket`, which is handed back
    /// for the authenticated checks.
    fn stranger(
        &self,
        mut socket: ClientSocket,
        server: SocketAddr,
        transport: Transport,
        findings: &mut Findings,
    ) -> ClientSocket {
        let (outcome, socket) = match turn::stranger_allocate(&mut socket, self.timeout) {
            Ok((request_len, response)) => {
                let outcome = read_stranger(&response);
                findings.unauthenticated.push(Unauthenticated { what: "Allocate", transport, request_len, response });
                match outcome {
                    Stranger::Allocated => {
                        // Anyone may relay here: delete what this made.
                        let blank = Credentials { username: String::new(), password: String::new() };
                        let mut session = TurnSession::new(socket, blank, self.timeout);
                        let _ = session.refresh(0);
                        (Stranger::Allocated, session.into_parts().0)
                    }
                    other => (other, socket),
                }
            }
            Err(e) => (Stranger::Unanswered(e.to_string()), socket),
        };
        findings.strangers.push((transport, server, outcome));
        socket
    }

    fn allocation_credentials(&self) -> Option<Credentials> {
        match self.credentials.as_ref()? {
            DoctorCredentials::Password(credentials) => Some(credentials.clone()),
            DoctorCredentials::Secret { user, secret } => {
                let rest = RestCredential::new(secret, user, CREDENTIAL_TTL, clock::unix_secs());
                Some(Credentials { username: rest.username, password: rest.password })
            }
        }
    }

    /// Allocate, the relayed address and the relay ports (once per server
    /// address), the round trips, and delete.
    fn relay(
        &self,
        socket: ClientSocket,
        at: Endpoint,
        tls: Option<TlsClient>,
        credentials: Credentials,
        report: &mut Report,
        findings: &mut Findings,
    ) {
        let Endpoint { server, transport } = at;
        let target = server.to_string();
        let user = credentials.username.clone();
        let mut session = TurnSession::new(socket, credentials, self.timeout);
        let allocated = match session.allocate(None) {
            Ok(allocated) => allocated,
            Err(e) => {
                let fix = self.allocate_fix(&e, &user, session.realm(), server);
                report.push(Check::fail(format!("allocate {transport}"), &target, e.to_string(), fix));
                return;
            }
        };
        report.push(Check::ok(
            format!("allocate {transport}"),
            &target,
            format!(
                "relayed {}, mapped {}, lifetime {} s, auth {}",
                allocated.relayed,
                allocated.mapped,
                allocated.lifetime,
                session.auth().map_or("none", |auth| auth.describe())
            ),
        ));
        findings.allocations.push(Allocation { server, transport, tls });
        let first = !findings.relays.contains_key(&server.ip());
        if first {
            let check = relayed_address_check(server, &allocated);
            findings.relays.insert(server.ip(), check.status != Status::Fail);
            report.push(check);
        }
        let reachable = findings.relays.get(&server.ip()).copied().unwrap_or(true);
        self.relay_steps(&mut session, at, &allocated, RelayState { first, reachable }, &user, report);
        if let Err(e) = session.refresh(0) {
            report.push(Check::warn(
                format!("delete {transport}"),
                &target,
                format!("Refresh with lifetime 0: {e}"),
                "the allocation stays until its lifetime ends",
            ));
        }
    }

    fn relay_steps(
        &self,
        session: &mut TurnSession,
        at: Endpoint,
        allocated: &Allocated,
        state: RelayState,
        user: &str,
        report: &mut Report,
    ) {
        let (Endpoint { server, transport }, RelayState { first, reachable }) = (at, state);
        let target = server.to_string();
        let relayed = allocated.relayed;
        let permission_check = format!("relay permission {transport}");
        let peer = ProbePeer::open(server, transport, None, self.timeout)
            .or_else(|_| ProbePeer::unmapped(server))
            .and_then(|peer| peer.learn_address(allocated.mapped.ip()));
        let peer = match peer {
            Ok(peer) => peer,
            Err(e) => {
                report.push(Check::fail(permission_check, &target, e, "this host cannot open a UDP socket"));
                return;
            }
        };
        if let Err(e) = session.create_permission(&[peer.addr()]) {
            let fix = relay_probe::hint(&e, user, peer.addr()).unwrap_or_else(|| "see the error".into());
            report.push(Check::fail(
                permission_check,
                &target,
                format!("CreatePermission for {}: {e}", peer.addr()),
                fix,
            ));
            return;
        }
        if first {
            report.push(relay_ports_check(
                &target,
                relay_probe::peer_sends_first(session, &peer, relayed, self.timeout),
                server,
                relayed,
                reachable,
            ));
        }
        let result = relay_probe::round_trip(session, &peer, relayed, None, self.timeout);
        report.push(round_trip_check(
            permission_check,
            &target,
            "Send and Data indications",
            result,
            relayed,
            reachable,
        ));
        let channel_check = format!("relay channel {transport}");
        if let Err(e) = session.channel_bind(PROBE_CHANNEL, peer.addr()) {
            let fix = relay_probe::hint(&e, user, peer.addr()).unwrap_or_else(|| "see the error".into());
            report.push(Check::fail(channel_check, &target, format!("ChannelBind: {e}"), fix));
            return;
        }
        let result = relay_probe::round_trip(session, &peer, relayed, Some(PROBE_CHANNEL), self.timeout);
        report.push(round_trip_check(channel_check, &target, "ChannelData", result, relayed, reachable));
    }

    fn allocate_fix(&self, error: &TurnError, user: &str, realm: Option<&str>, server: SocketAddr) -> String {
        let realm = realm.map_or(String::new(), |realm| format!(" (realm {realm:?})"));
        match (error.code(), &self.credentials) {
            (Some(401), Some(DoctorCredentials::Secret { user, .. })) => format!(
                "the server refused the REST credential for {user:?}: --secret is not one of its auth.secrets, or \
                 its clock and this host's differ by more than an hour"
            ),
            (Some(401), _) => format!("wrong password for {user:?}, or it is not in the server's auth.users{realm}"),
            _ => match error {
                TurnError::Timeout(_) => format!(
                    "no answer to an authenticated Allocate: is TURN on (credentials in [auth]; not --stun-only)? is \
                     {server} tern's?"
                ),
                TurnError::Integrity => "the server signs with another key: the same user in another realm, or \
                                         something rewrites the answers"
                    .into(),
                _ => relay_probe::hint(error, user, server).unwrap_or_else(|| "see the error".into()),
            },
        }
    }

    fn summary(&self, findings: &Findings, report: &mut Report) {
        if let Some(check) = reflexive_check(&findings.mappings) {
            report.push(check);
        }
        if findings.any_turn {
            if let Some(check) = stranger_check(&findings.strangers) {
                report.push(check);
            }
            report.push(self.realm_check(&findings.strangers));
            report.push(self.rest_expiry_check(&findings.allocations));
        }
        report.push(software_check(&findings.unauthenticated));
        report.push(amplification_check(&findings.unauthenticated));
    }

    fn realm_check(&self, strangers: &[(Transport, SocketAddr, Stranger)]) -> Check {
        let mut realms: Vec<(&str, SocketAddr)> = Vec::new();
        for (_, server, outcome) in strangers {
            if let Stranger::Challenged { realm } = outcome
                && !realms.iter().any(|(r, _)| r == realm)
            {
                realms.push((realm, *server));
            }
        }
        let target = realms.iter().map(|(_, s)| s.to_string()).collect::<Vec<_>>().join(", ");
        let Some((first, _)) = realms.first() else {
            return Check::skip("realm", "", "no server sent a 401 challenge, so no realm was announced");
        };
        if let Some(expected) = &self.realm
            && let Some((realm, server)) = realms.iter().find(|(r, _)| r != expected)
        {
            return Check::fail(
                "realm",
                server.to_string(),
                format!("the server announces realm {realm:?}, not {expected:?}"),
                format!(
                    "set realm = {expected:?} on the server (keys made with `tern key` and clients' stored keys \
                     depend on it), or give --realm {realm:?}"
                ),
            );
        }
        if realms.len() > 1 {
            let all = realms.iter().map(|(r, s)| format!("{r:?} at {s}")).collect::<Vec<_>>().join(", ");
            return Check::warn(
                "realm",
                target,
                format!("the servers announce different realms: {all}"),
                "give every node the same realm: long-term keys are per realm, so a user works on some nodes only",
            );
        }
        let expected = if self.realm.is_some() { " as expected" } else { "" };
        Check::ok("realm", target, format!("{first:?}{expected}"))
    }

    fn rest_expiry_check(&self, allocations: &[Allocation]) -> Check {
        let Some(DoctorCredentials::Secret { user, secret }) = &self.credentials else {
            return Check::skip(
                "rest expiry",
                "",
                "needs --secret: only TURN REST credentials expire (long-term passwords do not)",
            );
        };
        let Some(allocation) = allocations.iter().min_by_key(|a| a.transport == Transport::Tls) else {
            return Check::skip(
                "rest expiry",
                "",
                "no allocation worked with a fresh credential, so a refusal would prove nothing",
            );
        };
        let target = allocation.server.to_string();
        let now = clock::unix_secs();
        let expired =
            RestCredential::new(secret, user, CREDENTIAL_TTL, now - EXPIRED_AGO.as_secs() - CREDENTIAL_TTL.as_secs());
        let socket =
            match ClientSocket::connect(allocation.server, allocation.transport, allocation.tls.as_ref(), self.timeout)
            {
                Ok(socket) => socket,
                Err(e) => {
                    return Check::warn("rest expiry", target, format!("cannot connect: {e}"), "run tern doctor again");
                }
            };
        let credentials = Credentials { username: expired.username.clone(), password: expired.password };
        let mut session = TurnSession::new(socket, credentials, self.timeout);
        let ago = humantime::format_duration(EXPIRED_AGO);
        match session.allocate(None) {
            Err(e) if e.code() == Some(401) => Check::ok(
                "rest expiry",
                target,
                format!("a credential that expired {ago} ago ({}) was refused with 401", expired.username),
            ),
            Ok(_) => {
                let _ = session.refresh(0);
                Check::fail(
                    "rest expiry",
                    target,
                    format!("a credential that expired {ago} ago ({}) got an allocation", expired.username),
                    "the server does not check the expiry in REST usernames, so a credential once handed out works \
                     for ever: use a server that does (tern always does; coturn: use-auth-secret), and check its \
                     clock (NTP)",
                )
            }
            Err(e) => Check::warn(
                "rest expiry",
                target,
                format!("a credential that expired {ago} ago got {e}, not 401"),
                "RFC 8489 §9.2.4: wrong credentials get 401, so clients know to get new ones",
            ),
        }
    }
}

/// The fix for a transport on which nothing answered STUN.
fn unanswered(server: SocketAddr, transport: Transport) -> String {
    let port = server.port();
    match transport {
        Transport::Udp => format!(
            "nothing answers STUN on UDP {server}: check that tern listens there (listen) and that the firewall \
             and any cloud security group let UDP {port} in"
        ),
        Transport::Tcp => format!(
            "nothing answers STUN on TCP {server}: check listen, and that TCP {port} is open; or give the URL \
             ?transport=udp if the deployment serves UDP only"
        ),
        Transport::Tls => format!("the TLS port {server} does not answer STUN: check tls.listen"),
    }
}

/// Resolves `host` with the system resolver, within `timeout`; a thread
/// does the lookup, since `getaddrinfo` takes no deadline.
fn resolve_bounded(host: &str, port: u16, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    let (sender, receiver) = mpsc::channel();
    let query = (host.to_owned(), port);
    std::thread::spawn(move || {
        let result = query.to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>());
        // The caller may have given up waiting.
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(timeout) {
        Ok(Ok(ips)) => {
            let mut unique = Vec::new();
            for ip in ips {
                if !unique.contains(&ip) {
                    unique.push(ip);
                }
            }
            Ok(unique)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from the resolver within {}", humantime::format_duration(timeout))),
    }
}

/// The address this host sends from towards `server` (no packet is sent).
fn local_ip_towards(server: SocketAddr) -> Option<IpAddr> {
    let any = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(server).ok()?;
    socket.local_addr().ok().map(|addr| addr.ip())
}

fn read_stranger(response: &[u8]) -> Stranger {
    let Ok(message) = Message::parse(response) else {
        return Stranger::Refused("an invalid response".into());
    };
    match message.class() {
        Class::Success => Stranger::Allocated,
        Class::Error => {
            let code = message.attribute(AttrType::ERROR_CODE).and_then(|v| attr::read_error_code(v).ok());
            let realm = message.attribute(AttrType::REALM).and_then(|r| std::str::from_utf8(r).ok());
            match (code, realm, message.attribute(AttrType::NONCE)) {
                (Some(code), Some(realm), Some(_)) if code.code == 401 => {
                    Stranger::Challenged { realm: realm.to_owned() }
                }
                (Some(code), _, _) if code.code == 401 => Stranger::Refused("401 without REALM and NONCE".into()),
                (Some(code), _, _) => Stranger::Refused(format!("{} {}", code.code, code.reason)),
                (None, _, _) => Stranger::Refused("an error without ERROR-CODE".into()),
            }
        }
        _ => Stranger::Refused("not a response".into()),
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Public => "public",
        Scope::Loopback => "loopback",
        Scope::Private(name) => name,
    }
}

/// The missing `external_ip` mistake: a relayed address no client outside
/// can reach, from a server that clients reach at a public address.
fn relayed_address_check(server: SocketAddr, allocated: &Allocated) -> Check {
    let target = server.to_string();
    let (s, m, r) = (server.ip(), allocated.mapped.ip(), allocated.relayed.ip());
    let (relay_scope, server_scope, client_scope) = (Scope::of(r), Scope::of(s), Scope::of(m));
    if relay_scope.is_public() {
        let note = if r == s { "the address clients reach the server at" } else { "relay_ips or external_ip" };
        return Check::ok("relayed address", target, format!("{r} is public ({note})"));
    }
    if relay_scope == Scope::Loopback && server_scope == Scope::Loopback {
        return Check::skip(
            "relayed address",
            target,
            format!(
                "{r} and the server are on loopback: whether a client elsewhere could reach the relay cannot be \
                 told from this host"
            ),
        );
    }
    if server_scope.is_public() || client_scope.is_public() {
        let public = if server_scope.is_public() { s.to_string() } else { "PUBLIC-IP".to_owned() };
        return Check::fail(
            "relayed address",
            target,
            format!(
                "{r} is {}, but clients reach the server at {s} and this client is at {m}: peers on the Internet \
                 cannot send to it",
                scope_name(relay_scope)
            ),
            format!(
                "the relay is behind a NAT: set external_ip = [\"{public}/{r}\"] (tern serve --external-ip \
                 {public}/{r}; coturn: external-ip={public}/{r}) and forward the relay ports to {r}"
            ),
        );
    }
    Check::ok(
        "relayed address",
        target,
        format!(
            "{r} is {}, like the server address {s}: clients on that network only; run tern doctor from the \
             Internet to see what clients there get",
            scope_name(relay_scope)
        ),
    )
}

/// A peer's datagram to the relayed address before the relay sent it
/// anything: what a firewall in front of the relay ports drops.
fn relay_ports_check(
    target: &str,
    result: Result<(), RoundTripError>,
    server: SocketAddr,
    relayed: SocketAddr,
    reachable: bool,
) -> Check {
    match result {
        Ok(()) => {
            Check::ok("relay ports", target, format!("a datagram a peer sent first to {relayed} reached this client"))
        }
        Err(RoundTripError::NoReply { timeout, .. }) => {
            let fix = if !reachable {
                format!("{} is not an address peers can reach: fix the relayed address first (above)", relayed.ip())
            } else if relayed.ip() != server.ip() {
                format!(
                    "inbound UDP to the relay ports is dropped, or {} is not this relay's public address: open the \
                     relay port range (relay_ports, default 49152-65535) to UDP from anywhere, and check external_ip",
                    relayed.ip()
                )
            } else {
                "inbound UDP to the relay ports is dropped before tern (host firewall, cloud security group): open \
                 the relay port range (relay_ports, default 49152-65535) to UDP from anywhere; a stateful firewall \
                 passes answers to what the relay sent, but not the ICE checks that peers send first"
                    .to_owned()
            };
            Check::fail(
                "relay ports",
                target,
                format!(
                    "a datagram a peer sent first to {relayed} did not reach this client within {}",
                    humantime::format_duration(timeout)
                ),
                fix,
            )
        }
        Err(e) => Check::fail("relay ports", target, e.to_string(), "see the error"),
    }
}

fn round_trip_check(
    check: String,
    target: &str,
    how: &str,
    result: Result<(), RoundTripError>,
    relayed: SocketAddr,
    reachable: bool,
) -> Check {
    let error = match result {
        Ok(()) => {
            return Check::ok(check, target, format!("{how}: client → {relayed} → peer and back"));
        }
        Err(error) => error,
    };
    let fix = match &error {
        RoundTripError::WrongSource { from, relayed } => format!(
            "a NAT in front of the relay sends its traffic from {}: set external_ip = [\"{}/{}\"] so clients are \
             told the address their peers see",
            from.ip(),
            from.ip(),
            relayed.ip()
        ),
        RoundTripError::NotAtPeer { .. } => "the relay's datagrams do not reach the peer: the server's outbound UDP \
                                             from the relay ports is blocked, or this host drops them"
            .into(),
        RoundTripError::NoReply { .. } if !reachable => {
            format!("{} is not an address peers can reach: fix the relayed address first (above)", relayed.ip())
        }
        RoundTripError::NoReply { .. } => "the peer's answers to the relayed address do not come back: inbound UDP \
                                           to the relay ports is blocked (firewall, security group)"
            .into(),
        _ => "see the error".into(),
    };
    Check::fail(check, target, error.to_string(), fix)
}

fn reflexive_check(mappings: &[Mapping]) -> Option<Check> {
    let first = mappings.first()?;
    let target = first.server.to_string();
    for mapping in mappings {
        if let Some(other) =
            mappings.iter().find(|m| m.server.ip() == mapping.server.ip() && m.mapped.ip() != mapping.mapped.ip())
        {
            return Some(Check::warn(
                "reflexive address",
                mapping.server.to_string(),
                format!(
                    "the server sees this host as {} over {} but as {} over {}",
                    mapping.mapped.ip(),
                    mapping.transport,
                    other.mapped.ip(),
                    other.transport
                ),
                "something in front of tern rewrites client addresses on one transport (a load balancer or \
                 proxy): enable the PROXY protocol (proxy.listen, proxy.trusted), or let clients reach tern directly",
            ));
        }
    }
    let mapped = first.mapped.ip();
    if !Scope::of(mapped).is_public() && Scope::of(first.server.ip()).is_public() {
        return Some(Check::warn(
            "reflexive address",
            target,
            format!("the server at {} sees this host at {mapped}, a private address", first.server.ip()),
            "this host is inside the server's network (hairpin NAT), so these checks do not see what Internet \
             clients see: run tern doctor from outside",
        ));
    }
    let mut transports: Vec<String> = Vec::new();
    for mapping in mappings {
        let transport = mapping.transport.to_string();
        if !transports.contains(&transport) {
            transports.push(transport);
        }
    }
    let nat = match first.local {
        Some(local) if local == mapped => format!("no NAT between this host and the server (local {local})"),
        Some(local) => format!("this host is behind a NAT (local {local})"),
        None => "local address unknown".to_owned(),
    };
    Some(Check::ok("reflexive address", target, format!("{mapped} over {}; {nat}", transports.join(", "))))
}

fn stranger_check(strangers: &[(Transport, SocketAddr, Stranger)]) -> Option<Check> {
    let (_, first, _) = strangers.first()?;
    for (transport, server, outcome) in strangers {
        let target = server.to_string();
        match outcome {
            Stranger::Challenged { .. } => {}
            Stranger::Allocated => {
                return Some(Check::fail(
                    "auth",
                    target,
                    format!(
                        "an Allocate without credentials got a relay over {transport}: anyone can relay through this server"
                    ),
                    "configure credentials (auth.users or auth.secrets) and turn allow_anonymous off (coturn: drop \
                     no-auth)",
                ));
            }
            Stranger::Refused(what) => {
                return Some(Check::warn(
                    "auth",
                    target,
                    format!("an Allocate without credentials over {transport} got {what}, not a 401 challenge"),
                    "RFC 8656 §7.2: an unauthenticated Allocate gets 401 with REALM and NONCE, or clients cannot \
                     authenticate; is TURN on (turn = true, credentials in [auth])?",
                ));
            }
            Stranger::Unanswered(e) => {
                return Some(Check::fail(
                    "auth",
                    target,
                    format!("no answer to an Allocate over {transport}: {e}"),
                    "the server answers STUN but not TURN: turn it on (credentials in [auth], not --stun-only)",
                ));
            }
        }
    }
    Some(Check::ok(
        "auth",
        first.to_string(),
        format!("every Allocate without credentials got 401 with a realm and a nonce ({} tried)", strangers.len()),
    ))
}

/// SOFTWARE in answers anyone can get, which names the server's version.
fn software_check(answers: &[Unauthenticated]) -> Check {
    let mut values: Vec<String> = Vec::new();
    for answer in answers {
        let value = Message::parse(&answer.response)
            .ok()
            .and_then(|m| m.attribute(AttrType::SOFTWARE).map(|v| String::from_utf8_lossy(v).into_owned()));
        if let Some(value) = value
            && !values.contains(&value)
        {
            values.push(value);
        }
    }
    let Some(versioned) = values.iter().find(|v| names_a_version(v)) else {
        return match values.first() {
            Some(value) => Check::ok("software", "", format!("SOFTWARE {value:?} names no version")),
            None if answers.is_empty() => Check::skip("software", "", "no answer to look at"),
            None => Check::ok("software", "", "no SOFTWARE attribute in answers to unauthenticated requests"),
        };
    };
    Check::warn(
        "software",
        "",
        format!("answers to unauthenticated requests carry SOFTWARE {versioned:?}, which tells anyone the version"),
        "leave software unset (tern's default, software = \"\"); coturn: no-software-attribute",
    )
}

/// Whether `text` holds something like `4.6.2` or `v1`.
fn names_a_version(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(3).any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2].is_ascii_digit())
        || bytes.windows(2).any(|w| (w[0] == b'v' || w[0] == b'V') && w[1].is_ascii_digit())
}

/// The sizes of answers to requests anyone can send from a spoofed source
/// (UDP only: a TCP or TLS handshake proves the source first).
fn amplification_check(answers: &[Unauthenticated]) -> Check {
    let udp: Vec<&Unauthenticated> = answers.iter().filter(|a| a.transport == Transport::Udp).collect();
    if udp.is_empty() {
        return Check::skip(
            "amplification",
            "",
            "no answer over UDP to measure; over TCP and TLS a handshake comes first, so a spoofed source gets \
             nothing",
        );
    }
    let factor = |a: &Unauthenticated| a.response.len() as f64 / a.request_len.max(1) as f64;
    let mut shown: Vec<String> = Vec::new();
    for answer in &udp {
        let line = format!(
            "{} {} → {} bytes ({:.1}x)",
            answer.what,
            answer.request_len,
            answer.response.len(),
            factor(answer)
        );
        if !shown.contains(&line) {
            shown.push(line);
        }
    }
    let worst = udp.iter().map(|a| factor(a)).fold(0.0, f64::max);
    let detail = shown.join(", ");
    if worst > AMPLIFICATION_WARNING {
        Check::warn(
            "amplification",
            "",
            format!("{detail}: up to {worst:.1} times the request"),
            "a spoofed request makes the server send more than it got: drop SOFTWARE, reason phrases \
             (reason_phrases = false) and long realms or nonces from unauthenticated answers",
        )
    } else {
        Check::ok("amplification", "", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocated(relayed: &str, mapped: &str) -> Allocated {
        Allocated {
            relayed: relayed.parse().expect("literal"),
            also_relayed: None,
            mapped: mapped.parse().expect("literal"),
            lifetime: 600,
            address_error: None,
        }
    }

    #[test]
    fn a_private_relayed_address_behind_a_public_server_is_the_missing_external_ip() {
        let server: SocketAddr = "203.0.113.10:3478".parse().expect("literal");
        let check = relayed_address_check(server, &allocated("10.0.0.5:50000", "198.51.100.7:4000"));
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.as_deref().is_some_and(|f| f.contains("external_ip = [\"203.0.113.10/10.0.0.5\"]")));
        let public = relayed_address_check(server, &allocated("203.0.113.10:50000", "198.51.100.7:4000"));
        assert_eq!(public.status, Status::Ok);
        let loopback: SocketAddr = "127.0.0.1:3478".parse().expect("literal");
        let skipped = relayed_address_check(loopback, &allocated("127.0.0.1:50000", "127.0.0.1:4000"));
        assert_eq!(skipped.status, Status::Skip);
        let lan: SocketAddr = "192.168.1.2:3478".parse().expect("literal");
        let private = relayed_address_check(lan, &allocated("192.168.1.2:50000", "192.168.1.9:4000"));
        assert_eq!(private.status, Status::Ok);
    }

    #[test]
    fn versions_in_software_are_spotted() {
        assert!(names_a_version("Coturn-4.6.2 'Gorst'"));
        assert!(names_a_version("tern v0"));
        assert!(names_a_version("tern 0.1.0"));
        assert!(!names_a_version("tern"));
        assert!(!names_a_version("example relay"));
    }

    #[test]
    fn the_resolver_is_bounded_and_deduplicates() {
        let ips = resolve_bounded("localhost", 3478, Duration::from_secs(5)).expect("localhost resolves");
        assert!(ips.iter().any(IpAddr::is_loopback), "{ips:?}");
        let mut sorted = ips.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), ips.len());
    }
}
