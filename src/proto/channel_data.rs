//! ChannelData framing (RFC 8656 §12.4, §12.5).
//!
//! A 4-byte header (channel number, length) in front of application data. Over
//! UDP the datagram may carry up to three bytes of padding after the data; over
//! TCP and TLS the frame is always padded to a multiple of four.

use crate::proto::error::ParseError;

/// Length of the ChannelData header.
pub const HEADER_LEN: usize = 4;

/// A channel number. RFC 8656 §12 lets clients bind 0x4000..=0x4FFF; RFC 5766
/// allowed 0x4000..=0x7FFF, and some clients still pick from that range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const MIN: u16 = 0x4000;
    pub const MAX: u16 = 0x4FFF;
    /// The top of RFC 5766's range.
    pub const MAX_RFC5766: u16 = 0x7FFF;

    /// `None` outside 0x4000..=0x4FFF.
    pub fn new(value: u16) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&value).then_some(Self(value))
    }

    /// `None` outside 0x4000..=0x7FFF, the range of RFC 5766.
    pub fn new_rfc5766(value: u16) -> Option<Self> {
        (Self::MIN..=Self::MAX_RFC5766).contains(&value).then_some(Self(value))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// A ChannelData message borrowing the packet it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: ChannelNumber,
    pub payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Reads a ChannelData message; bytes after the announced length (padding)
    /// are ignored. Numbers of RFC 5766's wider range are accepted here; only
    /// a bound channel carries data, and only a ChannelBind decides which
    /// numbers may be bound.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let [c0, c1, l0, l1, rest @ ..] = bytes else {
            return Err(ParseError::Truncated("ChannelData header"));
        };
        let number = u16::from_be_bytes([*c0, *c1]);
        let channel = ChannelNumber::new_rfc5766(number).ok_or(ParseError::InvalidChannel(number))?;
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let payload = rest.get(..len).ok_or(ParseError::Truncated("ChannelData payload"))?;
        Ok(Self { channel, payload })
    }
}

/// Writes a ChannelData header for a payload of `len` bytes.
pub fn write_header(out: &mut [u8; HEADER_LEN], channel: ChannelNumber, len: u16) {
    out[..2].copy_from_slice(&channel.0.to_be_bytes());
    out[2..].copy_from_slice(&len.to_be_bytes());
}

/// Length of a frame on a stream transport: header, payload, padding to four.
pub fn padded_frame_len(payload_len: usize) -> usize {
    (HEADER_LEN + payload_len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_numbers_outside_the_range_are_refused() {
        assert!(ChannelNumber::new(0x3FFF).is_none());
        assert!(ChannelNumber::new(0x4000).is_some());
        assert!(ChannelNumber::new(0x4FFF).is_some());
        assert!(ChannelNumber::new(0x5000).is_none());
        assert!(ChannelNumber::new_rfc5766(0x7FFF).is_some());
        assert!(ChannelNumber::new_rfc5766(0x8000).is_none());
    }

    #[test]
    fn parse_accepts_padding_and_rejects_short_payloads() {
        let frame = [0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0];
        let data = ChannelData::parse(&frame).expect("valid");
        assert_eq!(data.channel.get(), 0x4001);
        assert_eq!(data.payload, &[1, 2, 3]);
        assert_eq!(ChannelData::parse(&frame[..6]).err(), Some(ParseError::Truncated("ChannelData payload")));
        assert_eq!(ChannelData::parse(&[0x80, 0, 0, 0]).err(), Some(ParseError::InvalidChannel(0x8000)));
        assert!(ChannelData::parse(&[0x7A, 0x6B, 0, 0]).is_ok(), "RFC 5766 numbers parse; binding decides");
        assert_eq!(ChannelData::parse(&[0x40]).err(), Some(ParseError::Truncated("ChannelData header")));
    }

    #[test]
    fn header_round_trips() {
        let channel = ChannelNumber::new(0x4ABC).expect("in range");
        let mut header = [0u8; HEADER_LEN];
        write_header(&mut header, channel, 5);
        let mut frame = header.to_vec();
        frame.extend_from_slice(b"hello");
        let data = ChannelData::parse(&frame).expect("valid");
        assert_eq!((data.channel, data.payload), (channel, &b"hello"[..]));
        assert_eq!(padded_frame_len(5), 12);
        assert_eq!(padded_frame_len(0), 4);
    }
}
