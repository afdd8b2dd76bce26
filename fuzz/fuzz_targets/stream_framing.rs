//! `stream_framing`: cutting a TCP/TLS byte stream into frames with
//! `demux::StreamFramer`, as src/io/tcp.rs and the client do, with the
//! stream arriving in reads of arbitrary sizes.
//!
//! Input: byte 0 is a count `n`, the next `n` bytes are read sizes (each
//! byte `b` means `b + 1` bytes, used in turn and repeated), and the rest is
//! the stream; `n = 0` delivers the stream in one piece. Each read offers the
//! framer's spare room of what it says is missing or the read size, whichever
//! is more, and fills only the read size, as a short read from a socket does.
//!
//! Checks that the framer never panics; that every frame is at most a whole
//! STUN message (65535 + 20 bytes) and is exactly the stream's bytes at its
//! place; that a STUN frame is never refused for its length by
//! `Message::parse` and a ChannelData frame always parses, padded to four
//! bytes; that the bytes kept waiting never exceed one frame; and that the
//! frames, the point where framing is lost and the unframed rest agree with
//! a one-shot cut of the whole stream by `demux::first_frame`, however the
//! stream was read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::proto::channel_data::{self, ChannelData};
use tern::proto::demux::{self, PacketKind, StreamFramer};
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
    let framed = reassemble(stream, sizes);
    let whole = cut_whole(stream);
    assert_eq!(framed, whole, "the framer disagrees with a one-shot cut");

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

/// The read loop of a connection: read into the framer, then take every
/// complete frame it has.
fn reassemble(stream: &[u8], sizes: &[u8]) -> Reassembly {
    let mut result = Reassembly { frames: Vec::new(), closed_at: None, leftover: 0 };
    let mut framer = StreamFramer::new();
    let mut framed = 0;
    let mut pos = 0;
    let mut turn = 0;
    while pos < stream.len() {
        let size = if sizes.is_empty() { stream.len() } else { usize::from(sizes[turn % sizes.len()]) + 1 };
        turn += 1;
        let Ok(missing) = framer.missing() else {
            result.closed_at = Some(framed);
            return result;
        };
        let read = size.min(stream.len() - pos);
        let spare = framer.spare(missing.max(size));
        spare[..read].copy_from_slice(&stream[pos..pos + read]);
        framer.commit(read);
        pos += read;
        assert!(framer.buffered().len() < MAX_FRAME + size, "buffered more than one frame and one read");

        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    let len = frame.len();
                    assert!(len <= MAX_FRAME, "frame of {len} bytes");
                    assert_eq!(frame, &stream[framed..framed + len], "a frame is not the stream's bytes");
                    result.frames.push(len);
                    framed += len;
                }
                Ok(None) => break,
                Err(_) => {
                    result.closed_at = Some(framed);
                    return result;
                }
            }
        }
        assert!(framer.buffered().len() < MAX_FRAME, "kept {} bytes waiting", framer.buffered().len());
    }
    let unframed = framer.take_unframed();
    assert_eq!(unframed, &stream[framed..], "the unframed rest is not the stream's tail");
    assert!(framer.buffered().is_empty());
    result.leftover = unframed.len();
    result
}

/// The whole stream cut at once, frame after frame.
fn cut_whole(stream: &[u8]) -> Reassembly {
    let mut result = Reassembly { frames: Vec::new(), closed_at: None, leftover: 0 };
    let mut rest = stream;
    loop {
        match demux::first_frame(rest) {
            Ok(Some(frame)) => {
                result.frames.push(frame.len());
                rest = &rest[frame.len()..];
            }
            Ok(None) => {
                result.leftover = rest.len();
                return result;
            }
            Err(_) => {
                result.closed_at = Some(stream.len() - rest.len());
                return result;
            }
        }
    }
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
