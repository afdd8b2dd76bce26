//! STUN and TURN error codes (RFC 8489 §14.8, RFC 8656 §19, RFC 6062 §6.3).

/// An error code carried in ERROR-CODE. A newtype so codes we do not name still
/// round-trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const TRY_ALTERNATE: Self = Self(300);
    pub const BAD_REQUEST: Self = Self(400);
    pub const UNAUTHENTICATED: Self = Self(401);
    pub const FORBIDDEN: Self = Self(403);
    pub const UNKNOWN_ATTRIBUTE: Self = Self(420);
    pub const ALLOCATION_MISMATCH: Self = Self(437);
    pub const STALE_NONCE: Self = Self(438);
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self(440);
    pub const WRONG_CREDENTIALS: Self = Self(441);
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: Self = Self(442);
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self(443);
    pub const CONNECTION_ALREADY_EXISTS: Self = Self(446);
    pub const CONNECTION_TIMEOUT_OR_FAILURE: Self = Self(447);
    pub const ALLOCATION_QUOTA_REACHED: Self = Self(486);
    pub const SERVER_ERROR: Self = Self(500);
    pub const INSUFFICIENT_CAPACITY: Self = Self(508);

    /// The RFC's reason phrase, for logs and (when enabled) the wire.
    pub fn reason(self) -> &'static str {
        match self.0 {
            300 => "Try Alternate",
            400 => "Bad Request",
            401 => "Unauthenticated",
            403 => "Forbidden",
            420 => "Unknown Attribute",
            437 => "Allocation Mismatch",
            438 => "Stale Nonce",
            440 => "Address Family not Supported",
            441 => "Wrong Credentials",
            442 => "Unsupported Transport Protocol",
            443 => "Peer Address Family Mismatch",
            446 => "Connection Already Exists",
            447 => "Connection Timeout or Failure",
            486 => "Allocation Quota Reached",
            500 => "Server Error",
            508 => "Insufficient Capacity",
            _ => "Error",
        }
    }

    /// The 4-byte prefix of the ERROR-CODE value: reserved bits, class, number.
    pub fn value_prefix(self) -> [u8; 4] {
        [0, 0, (self.0 / 100) as u8, (self.0 % 100) as u8]
    }
}
