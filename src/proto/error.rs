//! Errors of the sans-IO core.
//!
//! `ParseError` is what the codec reports about bytes from the network. It is
//! `Copy` and carries only `&'static str` context, so rejecting a packet never
//! allocates: a flood of junk costs no more than reading it.

use thiserror::Error;

/// Why a packet could not be read as a STUN message or ChannelData frame.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the fixed header, or than the length field announces.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The first two bits of a STUN message must be zero (RFC 8489 §5).
    #[error("leading bits of the message type are not zero")]
    NotStun,
    /// The magic cookie 0x2112A442 is missing: an RFC 3489 message or not STUN.
    #[error("magic cookie missing")]
    NoMagicCookie,
    /// The message length is not a multiple of four (RFC 8489 §5).
    #[error("message length is not a multiple of 4")]
    UnalignedLength,
    /// The length field disagrees with the bytes received.
    #[error("length field says {announced} bytes, packet has {actual}")]
    LengthMismatch { announced: usize, actual: usize },
    /// An attribute runs past the end of the message.
    #[error("attribute {0:#06x} overruns the message")]
    AttributeOverrun(u16),
    /// An attribute with a fixed size has another size.
    #[error("attribute {0:#06x} has an invalid length")]
    AttributeLength(u16),
    /// An attribute's value is not what its type allows.
    #[error("invalid {0}")]
    InvalidValue(&'static str),
    /// FINGERPRINT must be the last attribute (RFC 8489 §14.7).
    #[error("attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    /// ChannelData must use a channel number in 0x4000..=0x4FFF.
    #[error("channel number {0:#06x} outside 0x4000-0x4FFF")]
    InvalidChannel(u16),
}

/// Why a TURN request was refused, grouped by fault. [`RequestError::code`]
/// is the one place that decides what goes on the wire.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
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
}

impl RequestError {
    pub fn code(&self) -> crate::proto::stun::ErrorCode {
        use crate::proto::stun::ErrorCode;
        match self {
            Self::BadRequest(_) => ErrorCode::BAD_REQUEST,
            Self::PeerForbidden(_) => ErrorCode::FORBIDDEN,
            Self::UnsupportedAttribute(_) => ErrorCode::UNKNOWN_ATTRIBUTE,
            Self::NoAllocation | Self::AllocationExists => ErrorCode::ALLOCATION_MISMATCH,
            Self::WrongCredentials => ErrorCode::WRONG_CREDENTIALS,
            Self::UnsupportedTransport(_) => ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
            Self::AddressFamilyNotSupported => ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
            Self::PeerAddressFamilyMismatch => ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
            Self::QuotaReached => ErrorCode::ALLOCATION_QUOTA_REACHED,
            Self::InsufficientCapacity(_) => ErrorCode::INSUFFICIENT_CAPACITY,
            Self::TryAlternate(_) => ErrorCode::TRY_ALTERNATE,
            Self::ConnectionExists => ErrorCode::CONNECTION_ALREADY_EXISTS,
            Self::ConnectionFailed => ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE,
        }
    }
}
