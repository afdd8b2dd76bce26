//! ChannelData framing (RFC 8656 §12.4, §12.5).
//!
//! A 4-byte header (channel number, length) in front of application data. Over
//! UDP the datagram may carry up to three bytes of padding after the data; over
//! TCP and TLS the frame is always padded to a multiple of four. Frames are
//! written here for every sender: appended to a buffer ([`append`]), or put
//! around a payload already in place ([`write_in_place`], the relay's hot
//! path), one layout for both.

use crate::proto::error::ParseError;

/// Length of the ChannelData header.
pub const HEADER_LEN: usize = 4;
/// The most padding a frame carries: up to the next multiple of four.
pub const MAX_PADDING: usize = 3;

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

/// Writes a ChannelData header before the payload (and, on streams, padding
/// after it). The payload is `slot[headroom..headroom + len]`; returns the
/// frame's bounds in the slot, or `None` when the payload is over 65535
/// bytes or the slot has no room for the header or the padding.
pub fn write_in_place(
    slot: &mut [u8],
    headroom: usize,
    len: usize,
    channel: ChannelNumber,
    stream: bool,
) -> Option<(usize, usize)> {
    let start = headroom.checked_sub(HEADER_LEN)?;
    let mut header = [0u8; HEADER_LEN];
    write_header(&mut header, channel, u16::try_from(len).ok()?);
    slot.get_mut(start..headroom)?.copy_from_slice(&header);
    let end = if stream { start + padded_frame_len(len) } else { headroom + len };
    slot.get_mut(headroom + len..end)?.fill(0);
    Some((start, end))
}

/// Appends a ChannelData frame carrying `payload`, padded on a stream
/// transport (RFC 8656 §12.5). Returns the frame's length, or `None` (and
/// `out` unchanged) when the payload is over 65535 bytes.
pub fn append(out: &mut Vec<u8>, channel: ChannelNumber, payload: &[u8], stream: bool) -> Option<usize> {
    append_with(out, channel, payload.len(), stream, |room| room.copy_from_slice(payload))
}

/// [`append`] for a payload of `len` bytes that `fill` writes in place, so
/// a sender that makes its payload (the load generator) copies it nowhere.
pub fn append_with(
    out: &mut Vec<u8>,
    channel: ChannelNumber,
    len: usize,
    stream: bool,
    fill: impl FnOnce(&mut [u8]),
) -> Option<usize> {
    u16::try_from(len).ok()?;
    let start = out.len();
    out.resize(start + HEADER_LEN + len + MAX_PADDING, 0);
    let slot = &mut out[start..];
    fill(&mut slot[HEADER_LEN..HEADER_LEN + len]);
    let (_, end) = write_in_place(slot, HEADER_LEN, len, channel, stream)
        .expect("the length fits 16 bits and the slot has room for header and padding");
    out.truncate(start + end);
    Some(end)
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

    #[test]
    fn appended_frames_round_trip_and_pad_only_on_streams() {
        let channel = ChannelNumber::new(0x4001).expect("in range");
        for len in 0..=9 {
            let payload: Vec<u8> = (1..=len as u8).collect();
            for stream in [false, true] {
                let mut out = vec![0xEE];
                let frame_len = append(&mut out, channel, &payload, stream).expect("small payload");
                assert_eq!(out.len(), 1 + frame_len, "appended after what was there");
                let frame = &out[1..];
                let expected = if stream { padded_frame_len(len) } else { HEADER_LEN + len };
                assert_eq!(frame.len(), expected, "len {len} stream {stream}");
                assert!(frame[HEADER_LEN + len..].iter().all(|b| *b == 0), "padding is zero");
                let data = ChannelData::parse(frame).expect("valid");
                assert_eq!((data.channel, data.payload), (channel, &payload[..]));
            }
        }
    }

    #[test]
    fn payloads_over_64k_are_refused_and_leave_the_buffer_alone() {
        let channel = ChannelNumber::new(0x4001).expect("in range");
        let mut out = vec![1, 2, 3];
        assert_eq!(append(&mut out, channel, &vec![0; 65536], true), None);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(append(&mut out, channel, &vec![0; 65535], true), Some(65540));
        let mut slot = vec![0; 4 + 65536 + MAX_PADDING];
        assert_eq!(write_in_place(&mut slot, 4, 65536, channel, false), None);
    }

    #[test]
    fn in_place_frames_equal_appended_ones() {
        let channel = ChannelNumber::new(0x4ABC).expect("in range");
        for len in 0..=9 {
            let payload: Vec<u8> = (1..=len as u8).collect();
            for (headroom, stream) in [(4, false), (4, true), (48, false), (48, true)] {
                // Old bytes around the payload, as in a reused receive slot.
                let mut slot = vec![0xAA; headroom + len + MAX_PADDING];
                slot[headroom..headroom + len].copy_from_slice(&payload);
                let (start, end) = write_in_place(&mut slot, headroom, len, channel, stream).expect("room");
                assert_eq!(start, headroom - HEADER_LEN, "header right in front of the payload");
                let mut appended = Vec::new();
                append(&mut appended, channel, &payload, stream).expect("small payload");
                assert_eq!(&slot[start..end], &appended[..], "len {len} stream {stream}");
            }
        }
    }

    #[test]
    fn in_place_needs_room_for_header_and_padding() {
        let channel = ChannelNumber::new(0x4001).expect("in range");
        let mut slot = [0u8; 12];
        assert_eq!(write_in_place(&mut slot, 3, 5, channel, false), None, "no room for the header");
        assert_eq!(write_in_place(&mut slot, 4, 5, channel, false), Some((0, 9)));
        assert_eq!(write_in_place(&mut slot, 4, 5, channel, true), Some((0, 12)));
        assert_eq!(write_in_place(&mut slot, 5, 5, channel, true), None, "no room for the padding");
        assert_eq!(write_in_place(&mut slot, 8, 5, channel, false), None, "payload past the slot");
    }
}
