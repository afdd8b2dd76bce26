//! The STUN message codec (RFC 8489 §5, §14; TURN methods from RFC 8656 §17 and RFC 6062).
//!
//! Owns the wire format only: reading a message as a zero-copy view over a
//! byte slice ([`Message`]), writing one into a reusable buffer
//! ([`MessageWriter`]) or, for the Send and Data indications that carry
//! relayed data, around a payload in place ([`indication`]), and the
//! integrity and fingerprint computations over the exact bytes on the wire.
//! It decides nothing about what a message means and never allocates while
//! reading.

pub mod attr;
pub mod error_code;
pub mod indication;
pub mod integrity;
pub mod message;
pub mod writer;

pub use attr::AttrType;
pub use error_code::ErrorCode;
pub use message::{Attribute, Message};
pub use writer::MessageWriter;

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header: type, length, cookie, transaction ID.
pub const HEADER_LEN: usize = 20;
/// Length of an attribute's type and length fields.
pub const ATTR_HEADER_LEN: usize = 4;

/// The 96-bit transaction ID. For RFC 3489 messages, which have no magic
/// cookie, the cookie bytes belong to the ID; the codec keeps them in the
/// header and this type holds the last 12 bytes in both cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh random transaction ID, as RFC 8489 §6 asks of clients.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

/// A STUN method (12 bits). A newtype rather than an enum so that unknown
/// methods survive a round trip and can be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Self = Self(0x001);
    pub const ALLOCATE: Self = Self(0x003);
    pub const REFRESH: Self = Self(0x004);
    pub const SEND: Self = Self(0x006);
    pub const DATA: Self = Self(0x007);
    pub const CREATE_PERMISSION: Self = Self(0x008);
    pub const CHANNEL_BIND: Self = Self(0x009);
    pub const CONNECT: Self = Self(0x00A);
    pub const CONNECTION_BIND: Self = Self(0x00B);
    pub const CONNECTION_ATTEMPT: Self = Self(0x00C);

    /// The method's name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::BINDING => "Binding",
            Self::ALLOCATE => "Allocate",
            Self::REFRESH => "Refresh",
            Self::SEND => "Send",
            Self::DATA => "Data",
            Self::CREATE_PERMISSION => "CreatePermission",
            Self::CHANNEL_BIND => "ChannelBind",
            Self::CONNECT => "Connect",
            Self::CONNECTION_BIND => "ConnectionBind",
            Self::CONNECTION_ATTEMPT => "ConnectionAttempt",
            _ => "unknown",
        }
    }
}

/// The message class (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Method and class, packed on the wire into 14 bits with the class bits
/// interleaved (RFC 8489 §5, figure 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    pub const fn new(method: Method, class: Class) -> Self {
        Self { method, class }
    }

    /// Decodes the 16-bit type field; `None` when the two leading bits are set.
    pub fn from_u16(value: u16) -> Option<Self> {
        if value & 0xC000 != 0 {
            return None;
        }
        let method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2);
        let class = match ((value >> 7) & 0b10) | ((value >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        };
        Some(Self { method: Method(method), class })
    }

    pub fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0FFF;
        let c: u16 = match self.class {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        };
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_encoding_matches_rfc_8489_figure_3() {
        let binding_request = MessageType::new(Method::BINDING, Class::Request);
        assert_eq!(binding_request.to_u16(), 0x0001);
        assert_eq!(MessageType::new(Method::BINDING, Class::Success).to_u16(), 0x0101);
        assert_eq!(MessageType::new(Method::BINDING, Class::Error).to_u16(), 0x0111);
        assert_eq!(MessageType::new(Method::BINDING, Class::Indication).to_u16(), 0x0011);
        assert_eq!(MessageType::new(Method::ALLOCATE, Class::Request).to_u16(), 0x0003);
        assert_eq!(MessageType::new(Method::SEND, Class::Indication).to_u16(), 0x0016);
        assert_eq!(MessageType::new(Method::DATA, Class::Indication).to_u16(), 0x0017);
        assert_eq!(MessageType::new(Method::CHANNEL_BIND, Class::Error).to_u16(), 0x0119);
    }

    #[test]
    fn every_type_value_round_trips() {
        for value in 0..=0x3FFFu16 {
            let decoded = MessageType::from_u16(value).expect("leading bits are zero");
            assert_eq!(decoded.to_u16(), value);
        }
        assert_eq!(MessageType::from_u16(0x4001), None);
        assert_eq!(MessageType::from_u16(0x8001), None);
    }
}
