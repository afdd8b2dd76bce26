//! Allocate (RFC 8656 §7.2, RFC 6062 §5.1): the request's checks in the
//! RFC's order, the quota, a relay address and port per family, and the
//! wait for the driver's relay sockets.
//!
//! An accepted Allocate takes its ports from [`Resources`] at once and asks
//! the driver for the sockets with [`Event::OpenRelay`]; the allocation
//! holds its 5-tuple and its id meanwhile, but relays nothing. Each
//! [`Server::handle_relay_opened`] settles one family (a port another
//! program holds is traded for the next one, up to [`BIND_ATTEMPTS`]); once
//! all are settled the allocation goes live, or fails if no family opened,
//! and the answer leaves through the outbox.
//!
//! An id is never reused while the driver may still answer for it: an
//! allocation deleted while opening (its TCP connection closed) is
//! abandoned, its quota released and its open sockets closed, and it
//! leaves the table once the last answer has come.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tracing::{debug, info, info_span};

use super::admin;
use super::config::advertise;
use super::error::{RelayOpenError, RequestError};
use super::respond::{self, Reply};
use super::tcp_relay::check_tcp_allocate;
use super::timers::Timer;
use super::{ClientOutcome, DeleteReason, Event, Identity, RelayProtocol, Server, Transmit};
use crate::proto::allocation::{Allocation, AllocationId, ByteBucket, ClientHandle, LOG_TARGET, RelayId, Relayed};
use crate::proto::port_pool::{RESERVATION_LIFETIME, ReservationToken};
use crate::proto::resources::{PortError, PortRequest, QuotaError};
use crate::proto::stun::attr::{self, AttrType, FAMILY_IPV4, FAMILY_IPV6};
use crate::proto::stun::{Message, MessageWriter};
use crate::proto::{FiveTuple, Now};

/// IANA protocol number of UDP, the one REQUESTED-TRANSPORT tern relays.
const PROTOCOL_UDP: u8 = 17;
/// IANA protocol number of TCP, for RFC 6062 allocations.
const PROTOCOL_TCP: u8 = 6;
/// Ports tried for one family when the one the pool offers is taken by
/// another program.
pub(super) const BIND_ATTEMPTS: usize = 16;

/// An Allocate waiting for its relay sockets.
pub(super) struct Opening {
    answer: Reply,
    /// Where each family (IPv4, IPv6) stands.
    families: [Family; 2],
    port: PortRequest,
    dont_fragment: bool,
    protocol: RelayProtocol,
    reservation: Option<ReservationToken>,
    /// Deleted while opening: every socket that opens is closed, and the
    /// allocation goes once none is pending.
    abandoned: bool,
}

#[derive(Clone, Debug)]
enum Family {
    /// Not asked for, or settled for an abandoned allocation.
    Unused,
    /// The driver is opening a socket on `addr`, the `attempts`-th port tried.
    Pending {
        addr: SocketAddr,
        attempts: usize,
    },
    Opened(SocketAddr),
    Refused(RequestError),
}

impl Opening {
    fn is_settled(&self) -> bool {
        !self.families.iter().any(|f| matches!(f, Family::Pending { .. }))
    }
}

impl Server {
    /// RFC 8656 §7.2, in its order.
    pub(super) fn allocate(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<ClientOutcome, RequestError> {
        if let Some(id) = self.table.find(tuple) {
            let allocation = self.table.get(id).expect("indexed allocations exist");
            // A retransmission is the same transaction from the same user.
            let (live, expired, same_transaction) = (
                allocation.is_live(),
                allocation.is_live() && allocation.is_expired(now.instant),
                allocation.allocate_tid == request.transaction_id() && *allocation.username == *identity.username,
            );
            if expired {
                self.delete(id, DeleteReason::Expired);
            } else if same_transaction && !live {
                // The answer is on its way once the relay is open.
                return Ok(ClientOutcome::Deferred);
            } else if same_transaction {
                // A retransmission: the first answer was lost, send it again.
                let allocation = self.table.get(id).expect("found above");
                allocate_success(&self.config, allocation, now, &Reply::to(request, identity.key), reply);
                return Ok(ClientOutcome::Replied);
            } else {
                return Err(RequestError::AllocationExists);
            }
        }
        let transport = request
            .attribute(AttrType::REQUESTED_TRANSPORT)
            .ok_or(RequestError::BadRequest("REQUESTED-TRANSPORT missing"))?;
        let protocol = attr::read_requested_transport(transport)
            .map_err(|_| RequestError::BadRequest("REQUESTED-TRANSPORT malformed"))?;
        let protocol = match protocol {
            PROTOCOL_UDP => RelayProtocol::Udp,
            PROTOCOL_TCP => {
                check_tcp_allocate(tuple, request)?;
                RelayProtocol::Tcp
            }
            _ => return Err(RequestError::UnsupportedTransport(protocol)),
        };
        let dont_fragment = request.attribute(AttrType::DONT_FRAGMENT).is_some();
        let token = request
            .attribute(AttrType::RESERVATION_TOKEN)
            .map(attr::read_reservation_token)
            .transpose()
            .map_err(|_| RequestError::BadRequest("RESERVATION-TOKEN malformed"))?;
        let even_port = request
            .attribute(AttrType::EVEN_PORT)
            .map(attr::read_even_port)
            .transpose()
            .map_err(|_| RequestError::BadRequest("EVEN-PORT malformed"))?;
        let family = request
            .attribute(AttrType::REQUESTED_ADDRESS_FAMILY)
            .map(attr::read_address_family)
            .transpose()
            .map_err(|_| RequestError::BadRequest("REQUESTED-ADDRESS-FAMILY malformed"))?;
        let additional = request
            .attribute(AttrType::ADDITIONAL_ADDRESS_FAMILY)
            .map(attr::read_address_family)
            .transpose()
            .map_err(|_| RequestError::BadRequest("ADDITIONAL-ADDRESS-FAMILY malformed"))?;
        // RFC 8656 §7.2 rules 5, 6 and 8, and §18.11: IPv6 is the only
        // additional family (the first is IPv4).
        if token.is_some() && (even_port.is_some() || family.is_some() || additional.is_some()) {
            return Err(RequestError::BadRequest("RESERVATION-TOKEN with EVEN-PORT or an address family"));
        }
        if family.is_some() && additional.is_some() {
            return Err(RequestError::BadRequest("REQUESTED-ADDRESS-FAMILY with ADDITIONAL-ADDRESS-FAMILY"));
        }
        if additional.is_some_and(|f| f != FAMILY_IPV6) {
            return Err(RequestError::BadRequest("ADDITIONAL-ADDRESS-FAMILY other than IPv6"));
        }
        if additional.is_some() && even_port == Some(true) {
            return Err(RequestError::BadRequest("EVEN-PORT reservation with ADDITIONAL-ADDRESS-FAMILY"));
        }
        // The families to relay, as (is IPv6) in the order of the response.
        // A reservation names its address, so its family is whichever of
        // the two the pools find it in.
        let families: &[bool] = match (family, additional) {
            _ if token.is_some() => &[false, true],
            (_, Some(_)) => &[false, true],
            (None | Some(FAMILY_IPV4), None) => &[false],
            (Some(FAMILY_IPV6), None) => &[true],
            (Some(_), None) => return Err(RequestError::AddressFamilyNotSupported),
        };
        let turn = self.config.turn.as_ref().expect("TURN requests reach here only with TURN on");
        let requested = request
            .attribute(AttrType::LIFETIME)
            .map(attr::read_u32)
            .transpose()
            .map_err(|_| RequestError::BadRequest("LIFETIME malformed"))?;
        let lifetime = initial_lifetime(requested, turn.default_lifetime, turn.max_lifetime);
        let port = match (token, even_port) {
            (Some(token), _) => PortRequest::Reserved(token),
            (None, Some(reserve_next)) => PortRequest::Even { reserve_next },
            (None, None) => PortRequest::Any,
        };
        if self.draining {
            return Err(match self.alternate_server(tuple) {
                Some(alternate) => RequestError::TryAlternate(alternate),
                None => RequestError::InsufficientCapacity("server draining: no new allocations"),
            });
        }
        let quota_key = quota_key(identity, tuple);
        match self.resources.acquire_allocation(&quota_key) {
            Ok(()) => {}
            Err(QuotaError::User { limit }) => {
                self.notices.user_quota(&quota_key, limit);
                return Err(RequestError::QuotaReached);
            }
            Err(QuotaError::Total) => {
                return Err(match self.alternate_server(tuple) {
                    Some(alternate) => RequestError::TryAlternate(alternate),
                    None => RequestError::InsufficientCapacity("total allocation quota reached"),
                });
            }
        }
        let mut opening = Opening {
            answer: Reply::to(request, identity.key),
            families: [Family::Unused, Family::Unused],
            port,
            dont_fragment,
            protocol,
            reservation: None,
            abandoned: false,
        };
        for &ipv6 in families {
            if token.is_some() && !opening.is_settled() {
                break;
            }
            let ip = match token {
                Some(_) => Ok(if ipv6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() }),
                None => self.relay_ip(tuple, ipv6),
            };
            opening.families[usize::from(ipv6)] = match ip.and_then(|ip| self.take_port(now, ip, &mut opening)) {
                Ok(addr) => Family::Pending { addr, attempts: 1 },
                Err(error) => Family::Refused(error),
            };
        }
        if opening.is_settled() {
            self.resources.release_allocation(&quota_key);
            let first = opening.families.into_iter().find_map(|f| match f {
                Family::Refused(error) => Some(error),
                _ => None,
            });
            return Err(first.expect("every family asked for was refused"));
        }
        let mut placeholder = Allocation::opening(
            *tuple,
            client,
            &identity.username,
            &quota_key,
            now.instant,
            lifetime,
            request.transaction_id(),
        );
        placeholder.serial = self.serials.next();
        let id = self.table.insert(placeholder);
        for (ipv6, family) in [false, true].into_iter().zip(&opening.families) {
            if let Family::Pending { addr, .. } = family {
                self.events.push_back(Event::OpenRelay {
                    relay: RelayId::new(id, ipv6),
                    addr: *addr,
                    protocol,
                    dont_fragment,
                });
            }
        }
        self.opening.insert(id, opening);
        Ok(ClientOutcome::Deferred)
    }

    /// The driver's report on a relay socket an [`Event::OpenRelay`] asked
    /// for. Once every family of its allocation is settled, the Allocate's
    /// answer follows from [`Self::poll_transmit`].
    pub fn handle_relay_opened(&mut self, now: Now, relay: RelayId, result: Result<(), RelayOpenError>) {
        let id = relay.allocation();
        let family = usize::from(relay.is_ipv6());
        let Some(mut opening) = self.opening.remove(&id) else { return };
        let Family::Pending { addr, attempts } = opening.families[family] else {
            self.opening.insert(id, opening);
            return;
        };
        opening.families[family] = match result {
            Ok(()) if opening.abandoned => {
                self.close_relay(relay, addr);
                Family::Unused
            }
            Ok(()) => Family::Opened(addr),
            Err(error) => {
                self.resources.return_port(addr);
                match error {
                    _ if opening.abandoned => Family::Unused,
                    RelayOpenError::AddrInUse if matches!(opening.port, PortRequest::Reserved(_)) => {
                        Family::Refused(PortError::BadToken.into())
                    }
                    RelayOpenError::AddrInUse if attempts < BIND_ATTEMPTS => {
                        // Another program holds the port: it went to the back
                        // of the queue; try the next one.
                        match self.take_port(now, addr.ip(), &mut opening) {
                            Ok(next) => {
                                let (protocol, dont_fragment) = (opening.protocol, opening.dont_fragment);
                                self.events.push_back(Event::OpenRelay { relay, addr: next, protocol, dont_fragment });
                                Family::Pending { addr: next, attempts: attempts + 1 }
                            }
                            Err(error) => Family::Refused(error),
                        }
                    }
                    error => Family::Refused(error.into()),
                }
            }
        };
        if opening.is_settled() {
            self.settle(now, id, opening);
        } else {
            self.opening.insert(id, opening);
        }
    }

    /// Deletes an allocation whose relays are still opening: its quota goes
    /// back now, and its sockets are closed as they open.
    pub(super) fn abandon_opening(&mut self, id: AllocationId) {
        let Some(mut opening) = self.opening.remove(&id) else { return };
        if !opening.abandoned {
            opening.abandoned = true;
            if let Some(allocation) = self.table.get(id) {
                self.resources.release_allocation(&allocation.quota_key);
            }
            for (ipv6, family) in [false, true].into_iter().zip(&mut opening.families) {
                match family {
                    Family::Opened(addr) => {
                        let addr = *addr;
                        *family = Family::Unused;
                        self.close_relay(RelayId::new(id, ipv6), addr);
                    }
                    Family::Refused(_) => *family = Family::Unused,
                    Family::Unused | Family::Pending { .. } => {}
                }
            }
        }
        self.opening.insert(id, opening);
    }

    /// Every family of an opening allocation is settled: it goes live and
    /// is answered, or is refused if no family opened, or leaves if it was
    /// abandoned meanwhile.
    fn settle(&mut self, now: Now, id: AllocationId, opening: Opening) {
        if opening.abandoned {
            self.table.remove(id);
            return;
        }
        let turn = self.config.turn.as_ref().expect("only TURN allocates");
        let mut relayed = Vec::with_capacity(2);
        let mut refused = None;
        for (ipv6, family) in [false, true].into_iter().zip(opening.families) {
            match family {
                Family::Opened(addr) => relayed.push(Relayed { addr, advertised: advertise(&turn.external_ips, addr) }),
                Family::Refused(error) => {
                    refused.get_or_insert((ipv6, error));
                }
                Family::Unused | Family::Pending { .. } => {}
            }
        }
        let max_bps = turn.max_bps;
        let allocation = self.table.get_mut(id).expect("an opening allocation stays in the table");
        let transmit = Transmit { client: allocation.client, tuple: allocation.tuple };
        let Some(first) = relayed.first() else {
            let (_, error) = refused.expect("a family that did not open was refused");
            let quota_key = allocation.quota_key.clone();
            self.table.remove(id);
            self.resources.release_allocation(&quota_key);
            debug!(client = %transmit.tuple.client, method = "Allocate", code = error.code().0, %error, "request refused");
            let (config, stats) = (&self.config, &mut self.stats);
            self.outbox.push(transmit, |buf| {
                respond::refusal(config, stats, now, &transmit.tuple, buf, &opening.answer, &error);
            });
            return;
        };
        let span = info_span!(
            target: LOG_TARGET,
            "alloc",
            id = id.0,
            client = %transmit.tuple.client,
            transport = %transmit.tuple.transport,
            relay = %first.advertised,
        );
        allocation.go_live(&relayed, span);
        // A dual allocation that got one family says why not the other in
        // every answer to its Allocate, retransmissions included.
        if !matches!(opening.port, PortRequest::Reserved(_)) {
            allocation.refused_family = refused.map(|(ipv6, error)| (ipv6, error.code()));
        }
        allocation.reservation_token = opening.reservation;
        allocation.tcp_relay = opening.protocol == RelayProtocol::Tcp;
        if max_bps > 0 {
            allocation.bandwidth =
                Some(Box::new([ByteBucket::new(max_bps, now.instant), ByteBucket::new(max_bps, now.instant)]));
        }
        let lifetime = allocation.expires.saturating_duration_since(now.instant);
        if let Some(second) = relayed.get(1) {
            info!(target: LOG_TARGET, parent: &allocation.span, user = &*allocation.username, lifetime = lifetime.as_secs(), also = %second.advertised, "allocation created");
        } else {
            info!(target: LOG_TARGET, parent: &allocation.span, user = &*allocation.username, lifetime = lifetime.as_secs(), "allocation created");
        }
        self.stats.allocations_created += 1;
        self.looked_up.pin(&allocation.username);
        let realm = turn.auth.as_ref().map_or("", |auth| auth.realm());
        self.events.push_back(Event::AllocationCreated(super::AllocationInfo {
            id,
            serial: allocation.serial,
            user: allocation.username.clone(),
            realm: realm.into(),
            tuple: transmit.tuple,
            relayed: [allocation.relayed(false).copied(), allocation.relayed(true).copied()],
            lifetime,
            tcp: allocation.tcp_relay,
        }));
        let allocation = self.table.get(id).expect("live now");
        let config = &self.config;
        self.outbox.push(transmit, |buf| allocate_success(config, allocation, now, &opening.answer, buf));
        self.schedule(id);
    }

    /// A port of `ip` for the allocation `opening` describes; a reservation
    /// made with it is kept, and its end scheduled.
    fn take_port(&mut self, now: Now, ip: IpAddr, opening: &mut Opening) -> Result<SocketAddr, RequestError> {
        let (addr, reservation) = self.resources.take_port(ip, opening.port, now.instant)?;
        if let Some(token) = reservation {
            opening.reservation = Some(token);
            self.timers.schedule(now.instant + RESERVATION_LIFETIME, Timer::Reservations);
        }
        Ok(addr)
    }

    /// The relay IP for a new allocation: a configured relay IP of the family
    /// (round robin), or the address the request arrived on.
    fn relay_ip(&mut self, tuple: &FiveTuple, ipv6: bool) -> Result<IpAddr, RequestError> {
        let turn = self.config.turn.as_ref().expect("TURN is on");
        let candidates = turn.relay_ips.iter().filter(|ip| ip.is_ipv6() == ipv6);
        let count = candidates.clone().count();
        if count > 0 {
            self.relay_cursor = self.relay_cursor.wrapping_add(1);
            return Ok(*candidates.clone().nth(self.relay_cursor % count).expect("index below count"));
        }
        if turn.relay_ips.is_empty() && tuple.server.is_ipv6() == ipv6 && !tuple.server.ip().is_unspecified() {
            return Ok(tuple.server.ip());
        }
        Err(RequestError::AddressFamilyNotSupported)
    }

    /// The next configured alternate server (round robin) of the address
    /// family of the listener the client reached, so the client can reach
    /// it the same way. An IPv4 client on a dual-stack socket counts as IPv4.
    fn alternate_server(&mut self, tuple: &FiveTuple) -> Option<SocketAddr> {
        let ipv4 = match tuple.server.ip() {
            IpAddr::V4(_) => true,
            IpAddr::V6(ip) => ip.to_ipv4_mapped().is_some(),
        };
        let alternates = &self.config.turn.as_ref()?.alternate_servers;
        let count = alternates.iter().filter(|a| a.is_ipv4() == ipv4).count();
        if count == 0 {
            return None;
        }
        let chosen = alternates.iter().filter(|a| a.is_ipv4() == ipv4).nth(self.alternate_cursor % count).copied();
        self.alternate_cursor = self.alternate_cursor.wrapping_add(1);
        chosen
    }
}

/// An Allocate's success: the relayed addresses, ADDRESS-ERROR-CODE for a
/// family a dual allocation did not get, LIFETIME, RESERVATION-TOKEN and
/// XOR-MAPPED-ADDRESS.
fn allocate_success(
    config: &super::ServerConfig,
    allocation: &Allocation,
    now: Now,
    answer: &Reply,
    out: &mut Vec<u8>,
) {
    let reason_phrases = config.reason_phrases;
    respond::success(config, out, answer, |w: &mut MessageWriter<'_>| {
        for relayed in allocation.relayed_addresses() {
            w.xor_address(AttrType::XOR_RELAYED_ADDRESS, &relayed.advertised);
        }
        if let Some((ipv6, code)) = allocation.refused_family {
            let family = if ipv6 { FAMILY_IPV6 } else { FAMILY_IPV4 };
            w.address_error_code(family, code, reason_phrases.then(|| code.reason()));
        }
        w.attr_u32(AttrType::LIFETIME, allocation.remaining_secs(now.instant));
        if let Some(token) = allocation.reservation_token {
            w.attr(AttrType::RESERVATION_TOKEN, &token);
        }
        w.xor_address(AttrType::XOR_MAPPED_ADDRESS, &allocation.tuple.client);
    });
}

/// Who an allocation counts against for `user_quota`: the user, and for a
/// REST API credential (`EXPIRY:USER`) the user part, or every fresh
/// credential would bring a fresh quota. Without authentication, the client IP.
fn quota_key(identity: &Identity<'_>, tuple: &FiveTuple) -> String {
    match identity.key {
        Some(_) => admin::rest_user(&identity.username).unwrap_or(&identity.username).to_owned(),
        None => tuple.client.ip().to_string(),
    }
}

/// RFC 8656 §7.2, and §7.3 for a non-zero Refresh: the client's LIFETIME
/// capped at the maximum, but never below the default.
pub(super) fn initial_lifetime(requested: Option<u32>, default: Duration, max: Duration) -> Duration {
    match requested {
        Some(secs) => Duration::from_secs(u64::from(secs)).min(max).max(default),
        None => default,
    }
}
