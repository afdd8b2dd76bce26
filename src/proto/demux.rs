//! Telling STUN from ChannelData, and cutting frames out of a byte stream
//! (RFC 8656 §12.5, RFC 7983 §7).
//!
//! On a datagram the first two bits decide: `00` is STUN, `01` is ChannelData,
//! anything else is not ours. On TCP and TLS the same bits say how to read the
//! length of the next frame; a frame that is neither means the stream has lost
//! its framing and the connection must be closed. [`StreamFramer`] is the one
//! place a stream is cut into frames, for the server's connections and the
//! client's alike; it reads no socket itself.

use crate::proto::channel_data;
use crate::proto::error::ParseError;
use crate::proto::stun::HEADER_LEN;

/// Bytes 2..4 of both STUN and ChannelData hold the length, so four bytes
/// tell how long any frame is.
const LENGTH_FIELD_END: usize = 4;

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

/// The complete frame at the start of `stream`, or `None` when it is not
/// all there yet.
pub fn first_frame(stream: &[u8]) -> Result<Option<&[u8]>, ParseError> {
    Ok(stream_frame_len(stream)?.and_then(|len| stream.get(..len)))
}

/// A byte stream cut into STUN and ChannelData frames (RFC 8656 §12.5), with
/// the buffer it is read into.
///
/// Bytes go in through [`Self::spare`] and [`Self::commit`] (read straight
/// into the buffer) or [`Self::extend`]; frames come out of
/// [`Self::next_frame`] as slices of the buffer, so nothing is copied or
/// allocated per frame. Frames handed out are dropped lazily, by moving
/// what is left to the front only when a read needs the room. For a caller
/// that takes every frame after each read, what is left is less than a
/// frame, and the buffer, empty at first, grows only to the largest frame
/// in progress plus one read, so an idle connection stays cheap.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// The first byte not yet handed out in a frame.
    start: usize,
    /// The end of the bytes received; `buf[end..]` is room for the next read.
    end: usize,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A framer whose stream begins with `bytes`, read elsewhere (by the
    /// worker that handed a connection over).
    pub fn with_bytes(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        Self { buf: bytes, start: 0, end }
    }

    /// The bytes still missing from the frame in progress: what completes
    /// its length field, then what completes the frame; 0 when a whole
    /// frame is buffered. Reading at least this much brings a large STUN
    /// message in one pass; reading exactly this much never reads past the
    /// frame, for a stream that stops being framed after it (RFC 6062
    /// §4.4: after ConnectionBind's response come the peer's raw bytes).
    /// An error when the stream has lost its framing.
    pub fn missing(&self) -> Result<usize, ParseError> {
        let buffered = self.end - self.start;
        Ok(match stream_frame_len(self.buffered())? {
            Some(len) => len.saturating_sub(buffered),
            None => LENGTH_FIELD_END - buffered,
        })
    }

    /// Room for the next read, exactly `len` bytes, after the bytes
    /// buffered. Report what was read into it with [`Self::commit`].
    pub fn spare(&mut self, len: usize) -> &mut [u8] {
        self.make_room(len);
        &mut self.buf[self.end..self.end + len]
    }

    /// Counts `n` bytes read into [`Self::spare`] as received.
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "committed more bytes than the spare room holds");
        self.end += n;
    }

    /// Appends bytes read elsewhere, for a caller that reads into a buffer
    /// of its own (shared by many connections, so each framer grows only by
    /// what arrives).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.spare(bytes.len()).copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// The next complete frame, or `None` until more bytes are received;
    /// an error when the stream has lost its framing (nothing after that
    /// can be trusted, and every later call fails the same way).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ParseError> {
        let Some(frame) = first_frame(&self.buf[self.start..self.end])? else { return Ok(None) };
        let start = self.start;
        self.start += frame.len();
        Ok(Some(&self.buf[start..self.start]))
    }

    /// The bytes received and not yet handed out in a frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Takes the bytes received and not yet handed out in a frame, leaving
    /// the framer empty: what a stream carries on with once it is no longer
    /// framed (RFC 6062 §4.4), or a connection handed to another worker.
    pub fn take_unframed(&mut self) -> Vec<u8> {
        let unframed = self.buffered().to_vec();
        self.start = 0;
        self.end = 0;
        unframed
    }

    /// Makes `len` bytes of room after the bytes buffered: first by dropping
    /// the frames handed out (moving the bytes left to the front), then by
    /// growing the buffer.
    fn make_room(&mut self, len: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < len && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < len {
            self.buf.resize(self.end + len, 0);
        }
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

    /// A STUN message of `body` bytes of attributes, then a ChannelData
    /// frame of `payload` bytes padded to four, each filled with its index.
    fn two_frames(body: usize, payload: usize) -> (Vec<u8>, usize) {
        let mut stream = vec![0x00, 0x01];
        stream.extend_from_slice(&u16::try_from(body).expect("small").to_be_bytes());
        stream.resize(HEADER_LEN + body, 1);
        let stun = stream.len();
        channel_data::append(
            &mut stream,
            channel_data::ChannelNumber::new(0x4001).expect("in range"),
            &vec![2; payload],
            true,
        )
        .expect("small");
        (stream, stun)
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_is_read() {
        let (mut stream, stun) = two_frames(8, 5);
        stream.extend_from_slice(&stream.clone());
        let whole: Vec<&[u8]> = vec![&stream[..stun], &stream[stun..stun + 12]];
        for read in 1..=stream.len() {
            let mut framer = StreamFramer::new();
            let mut frames = Vec::new();
            for chunk in stream.chunks(read) {
                let room = framer.spare(read);
                room[..chunk.len()].copy_from_slice(chunk);
                framer.commit(chunk.len());
                while let Some(frame) = framer.next_frame().expect("framed") {
                    frames.push(frame.to_vec());
                }
            }
            assert_eq!(frames.len(), 4, "reads of {read}");
            for (frame, expected) in frames.iter().zip(whole.iter().cycle()) {
                assert_eq!(frame, expected, "reads of {read}");
            }
            assert!(framer.buffered().is_empty());
            // Less than a frame waiting, plus one read.
            assert!(framer.buf.len() < stun + read, "reads of {read}: buffer of {}", framer.buf.len());
        }
    }

    #[test]
    fn the_buffer_grows_to_the_largest_frame_not_the_stream() {
        let (frames, _) = two_frames(64, 3);
        let mut framer = StreamFramer::new();
        let mut count = 0;
        for _ in 0..1000 {
            framer.extend(&frames);
            while framer.next_frame().expect("framed").is_some() {
                count += 1;
            }
        }
        assert_eq!(count, 2000);
        assert!(framer.buf.len() <= frames.len(), "buffer of {} bytes", framer.buf.len());
        // A partial frame left over is kept at the front on the next read.
        framer.extend(&frames[..30]);
        assert_eq!(framer.next_frame(), Ok(None));
        framer.extend(&frames[30..]);
        assert_eq!(framer.next_frame().expect("framed").map(<[u8]>::len), Some(HEADER_LEN + 64));
        assert_eq!(framer.next_frame().expect("framed").map(<[u8]>::len), Some(8));
    }

    #[test]
    fn reading_what_is_missing_stops_at_the_frame_boundary() {
        let (mut stream, stun) = two_frames(8, 5);
        stream.extend_from_slice(b"raw bytes after the frames");
        let mut framer = StreamFramer::new();
        assert_eq!(framer.missing(), Ok(4), "an empty stream needs the length field first");
        let mut read = 0;
        let mut frames = Vec::new();
        while frames.len() < 2 {
            match framer.next_frame().expect("framed") {
                Some(frame) => frames.push(frame.len()),
                None => {
                    let missing = framer.missing().expect("framed");
                    framer.spare(missing).copy_from_slice(&stream[read..read + missing]);
                    framer.commit(missing);
                    read += missing;
                }
            }
        }
        assert_eq!(frames, [stun, 12]);
        assert_eq!(read, stun + 12, "not a byte past the last frame");
        assert_eq!(framer.missing(), Ok(4));
        framer.extend(&[0x00, 0x01]);
        assert_eq!(framer.missing(), Ok(2));
        framer.extend(&[0, 8]);
        assert_eq!(framer.missing(), Ok(HEADER_LEN + 8 - 4), "the rest of a STUN message");
    }

    #[test]
    fn unframed_bytes_are_taken_out_whole() {
        let (stream, stun) = two_frames(8, 5);
        let mut framer = StreamFramer::with_bytes(stream[..stun + 3].to_vec());
        assert_eq!(framer.next_frame().expect("framed").map(<[u8]>::len), Some(stun));
        assert_eq!(framer.next_frame(), Ok(None));
        assert_eq!(framer.take_unframed(), &stream[stun..stun + 3]);
        assert!(framer.buffered().is_empty());
        assert_eq!(framer.missing(), Ok(4));
    }

    #[test]
    fn a_stream_that_loses_its_framing_stays_lost() {
        let (mut stream, stun) = two_frames(8, 5);
        stream.truncate(stun);
        stream.extend_from_slice(&[0xFF, 0, 0, 0]);
        let mut framer = StreamFramer::new();
        framer.extend(&stream);
        assert_eq!(framer.next_frame().expect("first frame is good").map(<[u8]>::len), Some(stun));
        assert_eq!(framer.next_frame(), Err(ParseError::NotStun));
        assert_eq!(framer.next_frame(), Err(ParseError::NotStun));
        assert_eq!(framer.missing(), Err(ParseError::NotStun));

        let mut framer = StreamFramer::new();
        framer.extend(&[0x00, 0x01, 0x00, 0x07]);
        assert_eq!(framer.missing(), Err(ParseError::UnalignedLength));
    }

    #[test]
    fn first_frame_is_one_whole_frame() {
        let (stream, stun) = two_frames(8, 5);
        assert_eq!(first_frame(&stream), Ok(Some(&stream[..stun])));
        assert_eq!(first_frame(&stream[..stun - 1]), Ok(None));
        assert_eq!(first_frame(&stream[stun..]), Ok(Some(&stream[stun..])));
        assert_eq!(first_frame(&[]), Ok(None));
        assert_eq!(first_frame(&[0xC0, 0, 0, 0]), Err(ParseError::NotStun));
    }
}
