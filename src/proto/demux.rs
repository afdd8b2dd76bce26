//! Telling STUN from ChannelData, and cutting frames out of a byte stream
//! (RFC 8656 §12.5, RFC 7983 §7).
//!
//! On a datagram the first two bits decide: `00` is STUN, `01` is ChannelData,
//! anything else is not ours. On TCP and TLS the same bits say how to read the
//! length of the next frame; a frame that is neither means the stream has lost
//! its framing and the connection must be closed.

use crate::proto::channel_data;
use crate::proto::error::ParseError;
use crate::proto::stun::HEADER_LEN;

/// What a packet from a client is, judged by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    ChannelData,
    Other,
}

pub fn classify(packet: &[u8]) -> PacketKind {
    match packet.first() {
        Some(0x00..=0x3F) => PacketKind::Stun,
        Some(0x40..=0x7F) => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// The length of the frame at the start of `stream`, or `None` when more bytes
/// are needed to know it. ChannelData frames include their padding to four
/// bytes; STUN messages are always a multiple of four.
pub fn stream_frame_len(stream: &[u8]) -> Result<Option<usize>, ParseError> {
    match classify(stream) {
        PacketKind::Stun => {
            let Some(length) = stream.get(2..4) else { return Ok(None) };
            let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
            if !length.is_multiple_of(4) {
                return Err(ParseError::UnalignedLength);
            }
            Ok(Some(HEADER_LEN + length))
        }
        PacketKind::ChannelData => {
            let Some(length) = stream.get(2..4) else { return Ok(None) };
            Ok(Some(channel_data::padded_frame_len(usize::from(u16::from_be_bytes([length[0], length[1]])))))
        }
        PacketKind::Other if stream.is_empty() => Ok(None),
        PacketKind::Other => Err(ParseError::NotStun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_two_bits_decide() {
        assert_eq!(classify(&[0x00]), PacketKind::Stun);
        assert_eq!(classify(&[0x3F]), PacketKind::Stun);
        assert_eq!(classify(&[0x40]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x7F]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x80]), PacketKind::Other);
        assert_eq!(classify(&[]), PacketKind::Other);
    }

    #[test]
    fn stream_frames_are_measured_from_their_headers() {
        assert_eq!(stream_frame_len(&[]), Ok(None));
        assert_eq!(stream_frame_len(&[0x00, 0x01, 0x00]), Ok(None));
        assert_eq!(stream_frame_len(&[0x00, 0x01, 0x00, 0x08]), Ok(Some(28)));
        assert_eq!(stream_frame_len(&[0x00, 0x01, 0x00, 0x07]), Err(ParseError::UnalignedLength));
        assert_eq!(stream_frame_len(&[0x40, 0x00, 0x00, 0x05]), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x40, 0x00, 0x00, 0x00]), Ok(Some(4)));
        assert_eq!(stream_frame_len(&[0xFF]), Err(ParseError::NotStun));
    }
}
