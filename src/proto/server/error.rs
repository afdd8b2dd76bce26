//! Why a request is refused, and what goes on the wire for it.
//!
//! The errors of the parts the server is made of (authentication, relay
//! ports and sockets, channels, RFC 6062 connections, NAT discovery)
//! convert into [`RequestError`], and `From<&RequestError> for ErrorCode`
//! is the one place that decides the ERROR-CODE, as rustls keeps one
//! mapping from its error to an alert. What goes with each code is written
//! in `respond.rs`.

use thiserror::Error;

use crate::proto::allocation::ChannelBindError;
use crate::proto::auth::AuthError;
use crate::proto::nat_discovery::BadDiscoveryRequest;
use crate::proto::resources::PortError;
use crate::proto::stun::{AttrType, ErrorCode};
use crate::proto::tcp_relay::ConnectError;

/// The most unknown attributes listed in one 420 response; more are not
/// listed, which keeps the answer no larger than the request.
pub const MAX_UNKNOWN_LISTED: usize = 8;

/// Why a request was refused, grouped by fault.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Not authenticated; what the client needs to try again goes with it.
    #[error("not authenticated: {0:?}")]
    Unauthenticated(AuthError),
    /// Comprehension-required attributes tern does not know (RFC 8489 §6.3.1).
    #[error("unknown comprehension-required attributes")]
    UnknownAttributes(UnknownAttributes),
    #[error("peer refused by {0}")]
    PeerForbidden(crate::proto::policy::DenyRule),
    /// The request needs something this platform cannot do (DONT-FRAGMENT).
    #[error("attribute {0:#06x} not supported here")]
    UnsupportedAttribute(u16),
    #[error("no allocation for this 5-tuple")]
    NoAllocation,
    #[error("an allocation already exists for this 5-tuple")]
    AllocationExists,
    #[error("username differs from the one that created the allocation")]
    WrongCredentials,
    #[error("transport protocol {0} is not supported")]
    UnsupportedTransport(u8),
    #[error("address family not supported")]
    AddressFamilyNotSupported,
    #[error("peer address family differs from the relayed address")]
    PeerAddressFamilyMismatch,
    #[error("allocation quota of the user reached")]
    QuotaReached,
    #[error("insufficient capacity: {0}")]
    InsufficientCapacity(&'static str),
    /// Out of capacity, and another server can take the request.
    #[error("total allocation quota reached; redirected to {0}")]
    TryAlternate(std::net::SocketAddr),
    /// RFC 6062 §5.2: the allocation already has a connection to that peer.
    #[error("a connection to this peer already exists")]
    ConnectionExists,
    /// RFC 6062 §5.2: the TCP connection to the peer failed or timed out.
    #[error("connection to the peer failed or timed out")]
    ConnectionFailed,
    /// The store did not answer for the user in time, or is down.
    #[error("the user store is unavailable")]
    StoreUnavailable,
}

/// The unknown attribute types a 420 lists, at most [`MAX_UNKNOWN_LISTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownAttributes {
    types: [AttrType; MAX_UNKNOWN_LISTED],
    count: usize,
}

impl UnknownAttributes {
    /// The first [`MAX_UNKNOWN_LISTED`] of `types`, or `None` if there are none.
    pub fn collect(types: impl Iterator<Item = AttrType>) -> Option<Self> {
        let mut list = Self { types: [AttrType(0); MAX_UNKNOWN_LISTED], count: 0 };
        for (slot, typ) in list.types.iter_mut().zip(types) {
            *slot = typ;
            list.count += 1;
        }
        (list.count > 0).then_some(list)
    }

    pub fn as_slice(&self) -> &[AttrType] {
        &self.types[..self.count]
    }
}

/// Why the driver could not open a relay socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayOpenError {
    /// Another program holds the port; the core tries another.
    AddrInUse,
    /// DONT-FRAGMENT cannot be honoured on this platform.
    DontFragmentUnsupported,
    /// The socket could not be opened (descriptor limit, address gone).
    Unavailable,
}

impl From<&RequestError> for ErrorCode {
    fn from(error: &RequestError) -> Self {
        match error {
            RequestError::BadRequest(_) => Self::BAD_REQUEST,
            RequestError::Unauthenticated(auth) => match auth {
                AuthError::MissingAttributes | AuthError::AlgorithmMismatch => Self::BAD_REQUEST,
                AuthError::StaleNonce => Self::STALE_NONCE,
                AuthError::Challenge
                | AuthError::UnknownUser
                | AuthError::AlgorithmUnavailable
                | AuthError::WrongIntegrity
                | AuthError::Lookup => Self::UNAUTHENTICATED,
            },
            RequestError::UnknownAttributes(_) | RequestError::UnsupportedAttribute(_) => Self::UNKNOWN_ATTRIBUTE,
            RequestError::PeerForbidden(_) => Self::FORBIDDEN,
            RequestError::NoAllocation | RequestError::AllocationExists => Self::ALLOCATION_MISMATCH,
            RequestError::WrongCredentials => Self::WRONG_CREDENTIALS,
            RequestError::UnsupportedTransport(_) => Self::UNSUPPORTED_TRANSPORT_PROTOCOL,
            RequestError::AddressFamilyNotSupported => Self::ADDRESS_FAMILY_NOT_SUPPORTED,
            RequestError::PeerAddressFamilyMismatch => Self::PEER_ADDRESS_FAMILY_MISMATCH,
            RequestError::QuotaReached => Self::ALLOCATION_QUOTA_REACHED,
            RequestError::InsufficientCapacity(_) => Self::INSUFFICIENT_CAPACITY,
            RequestError::TryAlternate(_) => Self::TRY_ALTERNATE,
            RequestError::ConnectionExists => Self::CONNECTION_ALREADY_EXISTS,
            RequestError::ConnectionFailed => Self::CONNECTION_TIMEOUT_OR_FAILURE,
            RequestError::StoreUnavailable => Self::SERVER_ERROR,
        }
    }
}

impl RequestError {
    /// What goes on the wire for it.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::from(self)
    }
}

impl From<AuthError> for RequestError {
    fn from(error: AuthError) -> Self {
        Self::Unauthenticated(error)
    }
}

impl From<BadDiscoveryRequest> for RequestError {
    fn from(error: BadDiscoveryRequest) -> Self {
        Self::BadRequest(error.0)
    }
}

impl From<PortError> for RequestError {
    fn from(error: PortError) -> Self {
        match error {
            PortError::Exhausted => Self::InsufficientCapacity("relay port range exhausted"),
            PortError::BadToken => Self::InsufficientCapacity("reservation token unknown or expired"),
        }
    }
}

impl From<RelayOpenError> for RequestError {
    fn from(error: RelayOpenError) -> Self {
        match error {
            // Reached once the core has run out of ports to try.
            RelayOpenError::AddrInUse => PortError::Exhausted.into(),
            RelayOpenError::DontFragmentUnsupported => Self::UnsupportedAttribute(AttrType::DONT_FRAGMENT.0),
            RelayOpenError::Unavailable => Self::InsufficientCapacity("relay socket unavailable"),
        }
    }
}

impl From<ChannelBindError> for RequestError {
    fn from(error: ChannelBindError) -> Self {
        match error {
            ChannelBindError::Conflict => Self::BadRequest("channel or peer already bound otherwise"),
            ChannelBindError::TooManyChannels | ChannelBindError::TooManyPermissions => {
                Self::InsufficientCapacity("channel or permission limit reached")
            }
        }
    }
}

impl From<ConnectError> for RequestError {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Exists => Self::ConnectionExists,
            ConnectError::Capacity => Self::InsufficientCapacity("peer connection limit of the allocation"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_errors_map_to_400_401_and_438() {
        assert_eq!(RequestError::from(AuthError::AlgorithmMismatch).code(), ErrorCode::BAD_REQUEST);
        assert_eq!(RequestError::from(AuthError::MissingAttributes).code(), ErrorCode::BAD_REQUEST);
        assert_eq!(RequestError::from(AuthError::AlgorithmUnavailable).code(), ErrorCode::UNAUTHENTICATED);
        assert_eq!(RequestError::from(AuthError::WrongIntegrity).code(), ErrorCode::UNAUTHENTICATED);
        assert_eq!(RequestError::from(AuthError::StaleNonce).code(), ErrorCode::STALE_NONCE);
    }

    #[test]
    fn relay_failures_map_to_508_or_420() {
        assert_eq!(RequestError::from(PortError::Exhausted).code(), ErrorCode::INSUFFICIENT_CAPACITY);
        assert_eq!(RequestError::from(RelayOpenError::AddrInUse).code(), ErrorCode::INSUFFICIENT_CAPACITY);
        assert_eq!(RequestError::from(RelayOpenError::DontFragmentUnsupported).code(), ErrorCode::UNKNOWN_ATTRIBUTE);
        assert_eq!(RequestError::from(ConnectError::Exists).code(), ErrorCode::CONNECTION_ALREADY_EXISTS);
    }

    #[test]
    fn a_420_lists_at_most_eight_types() {
        let list = UnknownAttributes::collect((0..20).map(|n| AttrType(0x7000 + n))).expect("some");
        assert_eq!(list.as_slice().len(), MAX_UNKNOWN_LISTED);
        assert!(UnknownAttributes::collect(std::iter::empty()).is_none());
    }
}
