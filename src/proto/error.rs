//! Errors of the codec.
//!
//! `ParseError` is what the codec reports about bytes from the network. It is
//! `Copy` and carries only `&'static str` context, so rejecting a packet never
//! allocates: a flood of junk costs no more than reading it. Why a request is
//! refused is the server's (`proto::server::RequestError`).

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
