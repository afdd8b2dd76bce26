//! `stream_framing`: cutting a TCP/TLS byte stream into frames with
//! `demux::stream_frame_len`, as src/io/tcp.rs does, with the stream
//! arriving in arbitrary chunk sizes.
//!
//! Input: byte 0 is a count `n`, the next `n` bytes are chunk sizes (each
//! byte `b` means `b + 1` bytes, used in turn and repeated), and the rest is
//! the stream; `n = 0` delivers the stream in one piece.
//!
//! Checks that the loop never panics; that every frame is at most a whole
//! STUN message (65535 + 20 bytes); that a STUN frame is never refused for
//! its length by `Message::parse` and a ChannelData frame always parses,
//! padded to four bytes; that the bytes kept waiting never exceed one
//! frame; and that the frames and the point where framing is lost do not
//! depend on how the stream was chunked.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::proto::channel_data::{self, ChannelData};
use tern::proto::demux::{self, PacketKind};
use tern::proto::error::ParseError;
use tern::proto::stun::{HEADER_LEN, Message};

/// The largest frame a stream can announce: a STUN header and a 16-bit
/// length. ChannelData is smaller: 4 + 65535 padded to 65540.
const MAX_FRAME: usize = HEADER_LEN + 65535;

/// What a connection made of a stream.
#[derive(Debug, PartialEq, Eq)]
struct Reassembly {
    /// Length of each frame, in order; they tile the stream from its start.
    frames: Vec<usize>,
    /// Lost framing: where the bad header starts.
    closed_at: Option<usize>,
    /// Bytes of an incomplete frame left at the end of an open stream.
    leftover: usize,
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let chunked = reassemble(stream, sizes);
    let whole = reassemble(stream, &[]);
    assert_eq!(chunked, whole, "framing depends on chunk boundaries");

    let mut at = 0;
    for &len in &whole.frames {
        check_frame(&stream[at..at + len]);
        at += len;
    }
    match whole.closed_at {
        Some(closed_at) => assert_eq!(at, closed_at),
        None => assert_eq!(at + whole.leftover, stream.len()),
    }
});

/// The read loop of a connection: append a chunk, then cut every complete
/// frame from the front of the buffer.
fn reassemble(stream: &[u8], sizes: &[u8]) -> Reassembly {
    let mut result = Reassembly { frames: Vec::new(), closed_at: None, leftover: 0 };
    let mut inbuf: Vec<u8> = Vec::new();
    let mut consumed = 0;
    let mut pos = 0;
    let mut turn = 0;
    while pos < stream.len() {
        let size = if sizes.is_empty() { stream.len() } else { usize::from(sizes[turn % sizes.len()]) + 1 };
        turn += 1;
        let end = (pos + size).min(stream.len());
        inbuf.extend_from_slice(&stream[pos..end]);
        pos = end;
        assert!(inbuf.len() < MAX_FRAME + size, "buffered more than one frame and one chunk");

        let mut start = 0;
        loop {
            let rest = &inbuf[start..];
            match demux::stream_frame_len(rest) {
                Ok(Some(len)) if len <= rest.len() => {
                    assert!(len <= MAX_FRAME, "frame of {len} bytes");
                    result.frames.push(len);
                    start += len;
                }
                Ok(_) => break,
                Err(_) => {
                    result.closed_at = Some(consumed + start);
                    return result;
                }
            }
        }
        consumed += start;
        inbuf.drain(..start);
        assert!(inbuf.len() < MAX_FRAME, "kept {} bytes waiting", inbuf.len());
    }
    result.leftover = inbuf.len();
    result
}

/// What a frame cut by its own length must be.
fn check_frame(frame: &[u8]) {
    match demux::classify(frame) {
        PacketKind::Stun => {
            assert!(frame.len() >= HEADER_LEN && frame.len().is_multiple_of(4));
            match Message::parse(frame) {
                Ok(_) => {}
                Err(ParseError::Truncated(_) | ParseError::UnalignedLength | ParseError::LengthMismatch { .. }) => {
                    panic!("a STUN frame cut by its length was refused for its length")
                }
                Err(ParseError::NotStun) => panic!("a frame classified as STUN is not STUN"),
                Err(_) => {}
            }
        }
        PacketKind::ChannelData => {
            let data = ChannelData::parse(frame).expect("a ChannelData frame cut by its length parses");
            assert_eq!(frame.len(), channel_data::padded_frame_len(data.payload.len()));
        }
        PacketKind::Other => panic!("a frame that is neither STUN nor ChannelData was cut"),
    }
}
