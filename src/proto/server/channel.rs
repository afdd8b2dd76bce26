//! ChannelBind (RFC 8656 §11, §12): a channel number bound to a peer for
//! 600 seconds, with the peer's permission, within the allocation's caps;
//! a number and a peer stay apart from any other for five minutes after
//! their binding ends.

use tracing::debug;

use super::error::RequestError;
use super::respond::{self, Reply};
use super::{ClientOutcome, Event, Identity, Path, Server};
use crate::proto::allocation::ChannelBindError;
use crate::proto::channel_data::ChannelNumber;
use crate::proto::stun::Message;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::{FiveTuple, Now};

impl Server {
    /// RFC 8656 §11.2.
    pub(super) fn channel_bind(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<ClientOutcome, RequestError> {
        let id = self.table.find(tuple).ok_or(RequestError::NoAllocation)?;
        self.check_owner(now, id, identity)?;
        if self.table.get(id).is_some_and(|a| a.tcp_relay) {
            // RFC 6062 §4: a TCP allocation relays over connections, never channels.
            return Err(RequestError::BadRequest("ChannelBind on a TCP allocation"));
        }
        let number =
            request.attribute(AttrType::CHANNEL_NUMBER).ok_or(RequestError::BadRequest("CHANNEL-NUMBER missing"))?;
        let rfc5766 = self.config.turn.as_ref().is_some_and(|t| t.rfc5766_channels);
        let channel = attr::read_channel_number(number)
            .ok()
            .and_then(if rfc5766 { ChannelNumber::new_rfc5766 } else { ChannelNumber::new })
            .ok_or(RequestError::BadRequest("channel number outside 0x4000-0x4FFF"))?;
        let peer = request
            .attribute(AttrType::XOR_PEER_ADDRESS)
            .ok_or(RequestError::BadRequest("XOR-PEER-ADDRESS missing"))?;
        let peer = self.checked_peer(id, peer, request, Path::Request)?;
        let turn = self.config.turn.as_ref().expect("TURN requests reach here only with TURN on");
        let (max_channels, max_permissions) = (turn.max_channels, turn.max_permissions);
        self.expire_entries(now, id);
        let allocation = self.table.get_mut(id).expect("found above");
        if let Err(error) = allocation.bind_channel(channel, peer, now.instant, max_channels, max_permissions) {
            match error {
                ChannelBindError::TooManyChannels => self.notices.max_channels(max_channels),
                ChannelBindError::TooManyPermissions => self.notices.max_permissions(max_permissions),
                ChannelBindError::Conflict => false,
            };
            return Err(error.into());
        }
        debug!(parent: &allocation.span, channel = channel.get(), %peer, "channel bound");
        self.events.push_back(Event::ChannelBound { id, channel, peer });
        self.events.push_back(Event::PermissionInstalled { id, peer: peer.ip() });
        self.schedule(id);
        respond::success(&self.config, reply, &Reply::to(request, identity.key), |_| {});
        Ok(ClientOutcome::Replied)
    }
}
