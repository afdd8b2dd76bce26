//! Refresh (RFC 8656 §7.3): a new lifetime, LIFETIME 0 to delete, and
//! REQUESTED-ADDRESS-FAMILY to act on one relayed address of a dual
//! allocation.

use std::time::Duration;

use tracing::{debug, info};

use super::allocate::initial_lifetime;
use super::error::RequestError;
use super::respond::{self, Reply};
use super::{ClientOutcome, DeleteReason, Event, Identity, Server};
use crate::proto::allocation::{LOG_TARGET, RelayId};
use crate::proto::stun::Message;
use crate::proto::stun::attr::{self, AttrType, FAMILY_IPV4, FAMILY_IPV6};
use crate::proto::{FiveTuple, Now};

impl Server {
    pub(super) fn refresh(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<ClientOutcome, RequestError> {
        let id = self.live_allocation(now, tuple, identity)?;
        let turn = self.config.turn.as_ref().expect("TURN requests reach here only with TURN on");
        let (default_lifetime, max_lifetime) = (turn.default_lifetime, turn.max_lifetime);
        let allocation = self.table.get_mut(id).expect("found above");
        // REQUESTED-ADDRESS-FAMILY names one relayed address of the
        // allocation (443 if it has none of that family); with LIFETIME 0
        // only that one goes, when a dual allocation has two.
        let only_family = match request.attribute(AttrType::REQUESTED_ADDRESS_FAMILY) {
            Some(value) => {
                let ipv6 = match attr::read_address_family(value) {
                    Ok(FAMILY_IPV4) => false,
                    Ok(FAMILY_IPV6) => true,
                    Ok(_) => return Err(RequestError::PeerAddressFamilyMismatch),
                    Err(_) => return Err(RequestError::BadRequest("REQUESTED-ADDRESS-FAMILY malformed")),
                };
                if allocation.relayed(ipv6).is_none() {
                    return Err(RequestError::PeerAddressFamilyMismatch);
                }
                Some(ipv6)
            }
            None => None,
        };
        let requested = request
            .attribute(AttrType::LIFETIME)
            .map(attr::read_u32)
            .transpose()
            .map_err(|_| RequestError::BadRequest("LIFETIME malformed"))?;
        let lifetime = match requested {
            Some(0) => Duration::ZERO,
            requested => initial_lifetime(requested, default_lifetime, max_lifetime),
        };
        let reported = if lifetime.is_zero() {
            match only_family.and_then(|ipv6| allocation.drop_relayed(ipv6)) {
                Some(dropped) => {
                    info!(target: LOG_TARGET, parent: &allocation.span, relay = %dropped.advertised, "relayed address deleted");
                    // The rest of the allocation lives on as it was.
                    let remaining = allocation.expires.saturating_duration_since(now.instant);
                    self.close_relay(RelayId::new(id, dropped.addr.is_ipv6()), dropped.addr);
                    remaining
                }
                None => {
                    self.delete(id, DeleteReason::Refreshed);
                    lifetime
                }
            }
        } else {
            allocation.expires = now.instant + lifetime;
            debug!(parent: &allocation.span, lifetime = lifetime.as_secs(), "refreshed");
            self.events.push_back(Event::AllocationRefreshed { id, lifetime });
            self.schedule(id);
            lifetime
        };
        respond::success(&self.config, reply, &Reply::to(request, identity.key), |w| {
            w.attr_u32(AttrType::LIFETIME, u32::try_from(reported.as_secs()).unwrap_or(u32::MAX));
        });
        Ok(ClientOutcome::Replied)
    }
}
