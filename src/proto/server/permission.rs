//! CreatePermission (RFC 8656 §9, §10): permissions for peer IPs, each for
//! 300 seconds, within the allocation's `max_permissions`.

use tracing::debug;

use super::error::RequestError;
use super::respond::{self, Reply};
use super::{ClientOutcome, Event, Identity, Path, Server};
use crate::proto::stun::{AttrType, Message};
use crate::proto::{FiveTuple, Now};

impl Server {
    /// RFC 8656 §10.2: every XOR-PEER-ADDRESS is checked before any
    /// permission is installed, so a request succeeds or fails as a whole.
    pub(super) fn create_permission(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<ClientOutcome, RequestError> {
        let id = self.table.find(tuple).ok_or(RequestError::NoAllocation)?;
        self.check_owner(now, id, identity)?;
        let mut peers = Vec::new();
        for attribute in request.attributes().filter(|a| a.typ == AttrType::XOR_PEER_ADDRESS) {
            let ip = self.checked_peer(id, attribute.value, request, Path::Request)?.ip();
            if !peers.contains(&ip) {
                peers.push(ip);
            }
        }
        if peers.is_empty() {
            return Err(RequestError::BadRequest("XOR-PEER-ADDRESS missing"));
        }
        let max_permissions = self.config.turn.as_ref().map_or(0, |t| t.max_permissions);
        // Expired permissions must not count against the limit.
        self.expire_entries(now, id);
        let allocation = self.table.get_mut(id).expect("found above");
        let added = peers.iter().filter(|ip| allocation.would_add_permission(**ip)).count();
        // Only new permissions count: refreshing those an allocation holds
        // stays possible above a cap lowered by a reload.
        if added > 0 && allocation.permission_count() + added > max_permissions {
            self.notices.max_permissions(max_permissions);
            return Err(RequestError::InsufficientCapacity("permission limit of the allocation reached"));
        }
        for peer in peers {
            allocation.install_permission(peer, now.instant);
            debug!(parent: &allocation.span, %peer, "permission installed");
            self.events.push_back(Event::PermissionInstalled { id, peer });
        }
        self.schedule(id);
        respond::success(&self.config, reply, &Reply::to(request, identity.key), |_| {});
        Ok(ClientOutcome::Replied)
    }
}
