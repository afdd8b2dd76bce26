//! The server: what tern does with each packet from a client or a peer
//! (RFC 8489 §6.3 for STUN, RFC 8656 §7-§12 for TURN, RFC 6062 for TCP
//! relays, RFC 3489 §8 when classic STUN is enabled).
//!
//! # The run loop
//!
//! Every input carries the time: [`Server::handle_client`] (a datagram, or
//! one frame cut from a stream), [`Server::handle_peer`] (a datagram for a
//! relay socket), [`Server::handle_icmp`], [`Server::handle_relay_opened`],
//! the RFC 6062 reports (`handle_peer_connected`, `handle_peer_accepted`,
//! `handle_tcp_relay_closed`), [`Server::handle_connection_opened`] and
//! [`Server::handle_connection_closed`], and [`Server::handle_timeout`].
//!
//! The answer to a client packet is appended to the caller's buffer, and
//! data to relay comes back as a range into the caller's packet, so the
//! per-packet path copies nothing. Everything else leaves through three
//! outputs the driver drains after every input, as quinn-proto's do:
//! [`Server::poll_event`] (relay sockets to open and close, peers to
//! connect, and every decision observers need to see),
//! [`Server::poll_transmit`] (messages for clients written later), and
//! [`Server::poll_timeout`] (when to call `handle_timeout` next; the driver
//! sleeps until then).
//!
//! Relay ports, allocation quotas and connection admission are shared by
//! every worker; the core counts them through [`Resources`].
//!
//! Malformed packets, responses, and indications that cannot be relayed are
//! dropped and counted, never answered: junk is not reflected.

mod admin;
mod allocate;
mod binding;
mod channel;
mod config;
mod data;
mod error;
mod expiry;
mod lookup;
mod notices;
mod output;
mod permission;
mod refresh;
mod respond;
mod stats;
mod tcp_relay;
mod timers;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tracing::{debug, info, trace};

use self::admin::Revocations;
pub use self::admin::{AllocationListing, AllocationQuery, AllocationSummary, MAX_REVOCATIONS, Order, RevokeError};
use self::allocate::Opening;
pub use self::config::{ExternalIp, ServerConfig, TurnConfig};
pub use self::data::{PEER_HEADROOM, PEER_TAILROOM};
pub use self::error::{MAX_UNKNOWN_LISTED, RelayOpenError, RequestError, UnknownAttributes};
use self::lookup::Parked;
pub use self::lookup::{LOOKUP_WAIT, MAX_PARKED, MAX_PARKED_PER_NAME};
use self::notices::Notices;
use self::output::Outbox;
pub use self::output::{
    AllocationInfo, ClientOutcome, DeleteReason, Event, IcmpReport, PeerOutcome, RelayProtocol, Transmit,
};
use self::respond::Reply;
pub use self::stats::Stats;
use self::timers::{Timer, Timers};
use crate::proto::allocation::{AllocationId, ClientHandle, LOG_TARGET, RelayId};
use crate::proto::auth::{AuthError, SigningKey};
use crate::proto::demux::{self, PacketKind};
use crate::proto::error::ParseError;
use crate::proto::lookup::LookedUpUsers;
use crate::proto::policy;
use crate::proto::rate_limit::SourceLimiter;
use crate::proto::resources::Resources;
use crate::proto::stun::attr;
use crate::proto::stun::{Class, Message, Method};
use crate::proto::table::AllocationTable;
use crate::proto::tcp_relay::{ConnectionId, TcpRelayTable};
use crate::proto::{FiveTuple, Now};

/// Where a peer address came from: a request is logged at info when refused,
/// a Send indication (which a client can repeat at line rate) at debug.
#[derive(Clone, Copy)]
enum Path {
    Request,
    Send,
}

/// Who sent an authenticated request.
struct Identity<'m> {
    /// Borrowed from USERNAME, or owned when a USERHASH named the user.
    username: Cow<'m, str>,
    /// Signs every response; `None` only in anonymous mode.
    key: Option<SigningKey>,
}

/// One worker's STUN/TURN server state.
pub struct Server {
    config: ServerConfig,
    table: AllocationTable,
    stats: Stats,
    /// Ports, quotas and connection counts shared with the other workers.
    resources: Box<dyn Resources>,
    /// Every random draw of the core, seeded, so a run replays.
    rng: StdRng,
    /// Round-robin position among `relay_ips` of a family.
    relay_cursor: usize,
    /// Round-robin position among `alternate_servers` of a family.
    alternate_cursor: usize,
    /// Transaction IDs of Data indications: a counter after a random prefix.
    indication_counter: u64,
    indication_prefix: [u8; 4],
    limiter: SourceLimiter,
    /// RFC 6062 peer data connections.
    tcp: TcpRelayTable,
    /// Allocates waiting for their relay sockets.
    opening: HashMap<AllocationId, Opening>,
    /// Connects waiting for their peer, and how to answer them.
    connecting: HashMap<ConnectionId, Reply>,
    /// Draining: no new allocation here, existing ones carry on.
    draining: bool,
    events: VecDeque<Event>,
    outbox: Outbox,
    timers: Timers,
    /// A rate-limiter timer is in the heap.
    limiter_scheduled: bool,
    /// Limits and defaults already named in a warning.
    notices: Notices,
    serials: Serials,
    /// Names an operator revoked (see `admin`).
    revocations: Revocations,
    /// Users the store answered for (see `lookup`).
    looked_up: LookedUpUsers,
    /// Requests waiting for the store.
    parked: Parked,
}

/// Allocation serials: unique in the process, since each worker counts in
/// steps of the number of workers from its own index.
#[derive(Debug)]
struct Serials {
    next: u64,
    step: u64,
}

impl Serials {
    fn new(worker: usize, workers: usize) -> Self {
        let step = workers.max(1) as u64;
        // Serial 0 is never handed out: the first is the worker's index
        // plus one step.
        Self { next: worker as u64 + step, step }
    }

    fn next(&mut self) -> u64 {
        let serial = self.next;
        self.next += self.step;
        serial
    }
}

impl Server {
    /// A server counting against `resources`, drawing its randomness
    /// (relay ports aside) from `seed`.
    pub fn new(config: ServerConfig, resources: Box<dyn Resources>, seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        Self {
            limiter: SourceLimiter::new(config.rate_limit),
            config,
            table: AllocationTable::default(),
            stats: Stats::default(),
            resources,
            relay_cursor: 0,
            alternate_cursor: 0,
            indication_counter: 0,
            indication_prefix: rng.random(),
            rng,
            tcp: TcpRelayTable::default(),
            opening: HashMap::new(),
            connecting: HashMap::new(),
            draining: false,
            events: VecDeque::new(),
            outbox: Outbox::default(),
            timers: Timers::default(),
            limiter_scheduled: false,
            notices: Notices::default(),
            serials: Serials::new(0, 1),
            revocations: Revocations::default(),
            looked_up: LookedUpUsers::default(),
            parked: Parked::default(),
        }
    }

    /// Tells the server which worker (of `workers`) it is, so the
    /// CONNECTION-IDs it hands out are unique in the whole process and name
    /// their worker ([`crate::proto::tcp_relay::owner`]). Call before the
    /// first input.
    pub fn set_worker(&mut self, worker: usize, workers: usize) {
        self.tcp = TcpRelayTable::new(worker, workers);
        self.serials = Serials::new(worker, workers);
    }

    /// Stops taking new allocations, for a restart without cutting calls:
    /// an Allocate gets 300 Try Alternate to an alternate server when one is
    /// configured, 508 otherwise; existing allocations, their refreshes,
    /// permissions, channels and relaying carry on. There is no way back:
    /// a draining server is on its way out.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Takes a reloaded configuration for what comes next, keeping what
    /// the server holds. The new rules apply as things are asked for:
    /// an Allocate or Refresh gets the new lifetimes, caps and quotas,
    /// a new allocation the new `max_bps` and external addresses, a
    /// CreatePermission, ChannelBind or Send the new peer policy and caps,
    /// an unauthenticated answer the new rate limit. What exists stays as
    /// it was granted: an allocation keeps its lifetime and its bandwidth,
    /// and a permission or channel installed under the old policy or above
    /// a lowered cap lives until it expires (refreshing it is checked
    /// anew). The rate limiter keeps each source's tokens, and the
    /// authenticator its realm and nonce key (see [`Authenticator::renew`]),
    /// so the nonces handed out stay valid while the users and secrets
    /// are the new ones.
    ///
    /// Whether the server relays, and whether it authenticates, are fixed
    /// when it starts: false, and nothing changes, when `config` would
    /// change either.
    ///
    /// [`Authenticator::renew`]: crate::proto::auth::Authenticator::renew
    pub fn replace_config(&mut self, mut config: ServerConfig) -> bool {
        let same_mode = match (&self.config.turn, &config.turn) {
            (None, None) => true,
            (Some(running), Some(fresh)) => running.auth.is_some() == fresh.auth.is_some(),
            _ => false,
        };
        if !same_mode {
            return false;
        }
        let running_auth = self.config.turn.as_mut().and_then(|turn| turn.auth.take());
        if let (Some(mut auth), Some(turn)) = (running_auth, config.turn.as_mut()) {
            auth.renew(turn.auth.take().expect("the same mode: both authenticate"));
            turn.auth = Some(auth);
        }
        self.limiter.set_limit(config.rate_limit);
        self.config = config;
        true
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn table(&self) -> &AllocationTable {
        &self.table
    }

    /// The peer data connections of this worker's allocations.
    pub fn tcp_connections(&self) -> &TcpRelayTable {
        &self.tcp
    }

    /// The next decision, in order. Should be polled after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next message for a client that no packet of this moment
    /// answers, appended to `buf`. Should be polled after every input.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.outbox.pop_into(buf)
    }

    /// When [`Self::handle_timeout`] has work next; `None` when nothing is
    /// scheduled. Should be polled after every input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Handles one packet from a client: a datagram, or one frame cut from a
    /// stream by [`demux::stream_frame_len`]. `client` is how the driver
    /// reaches this client again, stored with any allocation made.
    pub fn handle_client(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        packet: &[u8],
        reply: &mut Vec<u8>,
    ) -> ClientOutcome {
        match demux::classify(packet) {
            PacketKind::Stun => self.handle_stun(now, tuple, client, packet, reply),
            PacketKind::ChannelData => self.handle_channel_data(now, tuple, packet),
            PacketKind::Other => self.drop_malformed(tuple, ParseError::NotStun),
        }
    }

    /// A client opened a TCP or TLS connection: whether the connection
    /// limits (per source IP and in all) admit it. An admitted connection
    /// is counted until [`Self::handle_connection_closed`], or, once it is
    /// the client side of an RFC 6062 pair, until the pair ends.
    pub fn handle_connection_opened(&mut self, tuple: &FiveTuple) -> bool {
        let source = tuple.client.ip();
        match self.resources.admit_connection(source) {
            Ok(()) => true,
            Err(limit) => {
                self.notices.connection_refused(source, limit);
                false
            }
        }
    }

    /// A TCP or TLS connection closed: its allocation goes with it (RFC 8656
    /// §3.1), and it no longer counts against the connection limits.
    pub fn handle_connection_closed(&mut self, tuple: &FiveTuple) {
        if let Some(id) = self.table.find(tuple) {
            self.delete(id, DeleteReason::ConnectionClosed);
        }
        self.forget_parked(tuple);
        self.resources.release_connection(tuple.client.ip());
    }

    /// Deletes every allocation, for shutdown.
    pub fn close_all(&mut self) {
        let ids: Vec<AllocationId> = self.table.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.delete(id, DeleteReason::Shutdown);
        }
    }

    fn handle_stun(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        packet: &[u8],
        reply: &mut Vec<u8>,
    ) -> ClientOutcome {
        let message = match Message::parse(packet) {
            Ok(message) => message,
            Err(ParseError::NoMagicCookie) if self.config.rfc3489 => match Message::parse_rfc3489(packet) {
                Ok(message) => {
                    if self.over_rate_limit(now, tuple) {
                        return ClientOutcome::Dropped;
                    }
                    return self.handle_rfc3489(tuple, &message, reply);
                }
                Err(error) => return self.drop_malformed(tuple, error),
            },
            Err(error) => return self.drop_malformed(tuple, error),
        };
        if message.has_fingerprint() && !message.verify_fingerprint() {
            self.stats.bad_fingerprint += 1;
            trace!(client = %tuple.client, "dropped: FINGERPRINT mismatch");
            return ClientOutcome::Dropped;
        }
        match message.class() {
            Class::Request => {
                self.stats.requests += 1;
                self.handle_request(now, tuple, client, &message, reply)
            }
            Class::Indication => {
                self.stats.indications += 1;
                if message.method() == Method::SEND && self.config.turn.is_some() {
                    self.handle_send(now, tuple, &message)
                } else {
                    ClientOutcome::Dropped
                }
            }
            Class::Success | Class::Error => {
                self.stats.unexpected_responses += 1;
                ClientOutcome::Dropped
            }
        }
    }

    fn handle_request(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        request: &Message<'_>,
        reply: &mut Vec<u8>,
    ) -> ClientOutcome {
        let is_turn_method = matches!(
            request.method(),
            Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT
                | Method::CONNECTION_BIND
        );
        if is_turn_method && self.config.turn.is_some() {
            // Authenticated first; unknown attributes are checked after that.
            return self.handle_turn_request(now, tuple, client, request, reply);
        }
        // Everything below is answered without credentials.
        if self.over_rate_limit(now, tuple) {
            return ClientOutcome::Dropped;
        }
        let answer = Reply::to(request, None);
        let error = match self.unknown_attributes(tuple, request) {
            Some(unknown) => unknown,
            None if request.method() == Method::BINDING => return self.binding_success(now, tuple, request, reply),
            None => RequestError::BadRequest("method not supported"),
        };
        debug!(client = %tuple.client, method = request.method().0, %error, "request refused");
        respond::refusal(&self.config, &mut self.stats, now, tuple, reply, &answer, &error);
        ClientOutcome::Replied
    }

    fn handle_turn_request(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        request: &Message<'_>,
        reply: &mut Vec<u8>,
    ) -> ClientOutcome {
        // The worker that holds the connection authenticates it, with the
        // users it remembers for its allocations.
        if let Some(worker) = self.connection_bind_owner(tuple, request) {
            return ClientOutcome::HandOff { worker };
        }
        let auth = self.config.turn.as_ref().and_then(|turn| turn.auth.as_ref());
        let looked_up = &mut self.looked_up;
        let authenticated = match auth.map(|auth| auth.authenticate(request, tuple.client.ip(), now.unix, looked_up)) {
            // A revoked name is refused as an unknown one is: with a
            // challenge, which its credentials cannot answer.
            Some(Ok(authenticated)) if self.revocations.covers(&authenticated.username) => {
                self.stats.revoked_refusals += 1;
                Some(Err(AuthError::UnknownUser))
            }
            Some(Ok(authenticated)) if authenticated.refresh => {
                self.ask_store(&authenticated.username);
                Some(Ok(authenticated))
            }
            // The user of a ConnectionBind has an allocation here, so it is
            // remembered (`lookup`): a name that is not is not its user.
            Some(Err(AuthError::Lookup)) if request.method() == Method::CONNECTION_BIND => {
                Some(Err(AuthError::UnknownUser))
            }
            Some(Err(AuthError::Lookup)) => {
                let name = request.attribute(attr::AttrType::USERNAME).and_then(|name| std::str::from_utf8(name).ok());
                return match name {
                    Some(name) => self.park(now, tuple, client, name, request),
                    None => ClientOutcome::Dropped,
                };
            }
            other => other,
        };
        let identity = match authenticated {
            Some(Ok(authenticated)) => Identity { username: authenticated.username, key: Some(authenticated.key) },
            Some(Err(error)) => {
                if self.over_rate_limit(now, tuple) {
                    return ClientOutcome::Dropped;
                }
                let answer = Reply::to(request, None);
                respond::refusal(&self.config, &mut self.stats, now, tuple, reply, &answer, &error.into());
                return ClientOutcome::Replied;
            }
            None => Identity { username: Cow::Borrowed(""), key: None },
        };
        if identity.key.is_none() && self.over_rate_limit(now, tuple) {
            return ClientOutcome::Dropped;
        }
        let answer = Reply::to(request, identity.key);
        let result = match self.unknown_attributes(tuple, request) {
            Some(unknown) => Err(unknown),
            None => match request.method() {
                Method::ALLOCATE => self.allocate(now, tuple, client, request, &identity, reply),
                Method::REFRESH => self.refresh(now, tuple, request, &identity, reply),
                Method::CREATE_PERMISSION => self.create_permission(now, tuple, request, &identity, reply),
                Method::CONNECT => self.connect(now, tuple, request, &identity),
                Method::CONNECTION_BIND => self.connection_bind(now, tuple, request, &identity, reply),
                _ => self.channel_bind(now, tuple, request, &identity, reply),
            },
        };
        match result {
            Ok(outcome) => outcome,
            Err(error) => {
                debug!(client = %tuple.client, method = request.method().name(), code = error.code().0, %error, "request refused");
                respond::refusal(&self.config, &mut self.stats, now, tuple, reply, &answer, &error);
                ClientOutcome::Replied
            }
        }
    }

    /// RFC 8489 §6.3.1: a request with comprehension-required attributes
    /// tern does not know gets 420 listing them, signed when the request
    /// was authenticated (§9.2.4). RFC 8489 §6.3 checks this after
    /// authentication, so TURN requests come here only once authenticated.
    fn unknown_attributes(&self, tuple: &FiveTuple, request: &Message<'_>) -> Option<RequestError> {
        // RFC 5780 §7: its request attributes are understood in Binding
        // requests to the addresses discovery serves, and nowhere else.
        let discovery = request.method() == Method::BINDING
            && self.config.nat_discovery.as_ref().is_some_and(|d| d.serves(tuple.server));
        let unknown = request.unknown_required().filter(|typ| !(discovery && typ.is_nat_discovery_request()));
        UnknownAttributes::collect(unknown).map(RequestError::UnknownAttributes)
    }

    /// Ends an allocation: its relays and peer connections close, its quota
    /// is released, and observers hear of it with its traffic totals. One
    /// whose relays are still opening keeps its id until the driver has
    /// answered for each (see `allocate.rs`).
    fn delete(&mut self, id: AllocationId, reason: DeleteReason) {
        if self.table.get(id).is_some_and(|a| !a.is_live()) {
            self.abandon_opening(id);
            return;
        }
        let Some(allocation) = self.table.remove(id) else { return };
        self.looked_up.unpin(&allocation.username);
        self.close_tcp_connections(id, &allocation.tuple);
        for relayed in allocation.relayed_addresses() {
            self.close_relay(RelayId::new(id, relayed.addr.is_ipv6()), relayed.addr);
        }
        self.resources.release_allocation(&allocation.quota_key);
        self.stats.allocations_deleted += 1;
        let t = allocation.traffic;
        info!(
            target: LOG_TARGET,
            parent: &allocation.span,
            reason = reason.as_str(),
            packets_to_peer = t.packets_to_peer,
            bytes_to_peer = t.bytes_to_peer,
            packets_to_client = t.packets_to_client,
            bytes_to_client = t.bytes_to_client,
            "allocation deleted"
        );
        self.events.push_back(Event::AllocationDeleted { id, tuple: allocation.tuple, reason, traffic: t });
    }

    /// Gives a relay's port back and tells the driver to close its socket.
    fn close_relay(&mut self, relay: RelayId, addr: SocketAddr) {
        self.resources.return_port(addr);
        self.events.push_back(Event::CloseRelay { relay, addr });
    }

    /// The allocation of `tuple` if it is alive and `identity` owns it.
    fn live_allocation(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        identity: &Identity<'_>,
    ) -> Result<AllocationId, RequestError> {
        let id = self.table.find(tuple).ok_or(RequestError::NoAllocation)?;
        if self.table.get(id).is_some_and(|a| a.is_live() && a.is_expired(now.instant)) {
            self.delete(id, DeleteReason::Expired);
            return Err(RequestError::NoAllocation);
        }
        self.check_owner(now, id, identity)?;
        Ok(id)
    }

    /// 437 for an expired allocation (or one whose relays are still
    /// opening), 441 for another user's (RFC 8656 §5).
    fn check_owner(&self, now: Now, id: AllocationId, identity: &Identity<'_>) -> Result<(), RequestError> {
        let allocation = self.table.get(id).ok_or(RequestError::NoAllocation)?;
        if !allocation.is_live() || allocation.is_expired(now.instant) {
            return Err(RequestError::NoAllocation);
        }
        if identity.key.is_some() && *allocation.username != *identity.username {
            return Err(RequestError::WrongCredentials);
        }
        Ok(())
    }

    /// Reads a XOR-PEER-ADDRESS and applies the family check (443) and the
    /// peer policy (403). Returns the peer in canonical form.
    fn checked_peer(
        &mut self,
        id: AllocationId,
        value: &[u8],
        message: &Message<'_>,
        path: Path,
    ) -> Result<SocketAddr, RequestError> {
        let peer = attr::read_xor_address(value, &message.transaction_id())
            .map_err(|_| RequestError::BadRequest("XOR-PEER-ADDRESS malformed"))?;
        let ip = policy::canonical(peer.ip());
        let allocation = self.table.get(id).ok_or(RequestError::NoAllocation)?;
        if allocation.relayed(ip.is_ipv6()).is_none() {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        let policy = &self.config.turn.as_ref().expect("TURN requests reach here only with TURN on").policy;
        match policy.check_peer(SocketAddr::new(ip, peer.port())) {
            Ok(ip) => Ok(SocketAddr::new(ip, peer.port())),
            Err(rule) => {
                self.stats.peers_forbidden += 1;
                self.notices.peer_refused(ip, &rule);
                match path {
                    Path::Request => {
                        info!(parent: &allocation.span, client = %allocation.tuple.client, peer = %ip, %rule, "peer refused")
                    }
                    Path::Send => {
                        debug!(parent: &allocation.span, client = %allocation.tuple.client, peer = %ip, %rule, "Send to refused peer")
                    }
                }
                Err(RequestError::PeerForbidden(rule))
            }
        }
    }

    /// Whether an answer without credentials to this client would exceed its
    /// source's budget; counted when it does.
    fn over_rate_limit(&mut self, now: Now, tuple: &FiveTuple) -> bool {
        let allowed = self.limiter.allow(tuple.client.ip(), now.instant);
        if !self.limiter_scheduled && !self.limiter.is_empty() {
            self.limiter_scheduled = true;
            self.timers.schedule(now.instant + expiry::FORGET_SOURCES_EVERY, Timer::RateLimiter);
        }
        if allowed {
            return false;
        }
        self.stats.rate_limited += 1;
        self.notices.rate_limited(tuple.client.ip(), self.config.rate_limit.per_second);
        trace!(client = %tuple.client, "unauthenticated answer rate-limited");
        true
    }

    fn drop_malformed(&mut self, tuple: &FiveTuple, error: ParseError) -> ClientOutcome {
        self.stats.malformed += 1;
        trace!(client = %tuple.client, %error, "dropped malformed packet");
        ClientOutcome::Dropped
    }

    fn drop_client_data(&mut self, why: &'static str) -> ClientOutcome {
        self.stats.dropped_client_data += 1;
        trace!(why, "client data dropped");
        ClientOutcome::Dropped
    }
}

#[cfg(test)]
mod tests;
