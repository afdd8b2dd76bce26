//! `channel_data`: any bytes through `ChannelData::parse` and
//! `demux::classify`.
//!
//! Checks that neither panics; that an accepted frame has a channel number
//! in RFC 5766's range, a payload that is exactly the announced bytes after
//! the header, and a first byte that `classify` calls ChannelData; that
//! writing the frame back (`channel_data::append`) reproduces it; that
//! written in place around its payload it is the same bytes; and that the
//! stream length `demux::stream_frame_len` gives for it covers the payload
//! and its padding, which is what the encoder writes on a stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::proto::channel_data::{self, ChannelData, ChannelNumber};
use tern::proto::demux::{self, PacketKind};

fuzz_target!(|data: &[u8]| {
    let kind = demux::classify(data);
    match data.first() {
        Some(0x00..=0x3F) => assert_eq!(kind, PacketKind::Stun),
        Some(0x40..=0x7F) => assert_eq!(kind, PacketKind::ChannelData),
        _ => assert_eq!(kind, PacketKind::Other),
    }

    let Ok(frame) = ChannelData::parse(data) else {
        // Only a short packet or a number outside 0x4000..=0x7FFF is refused.
        if kind == PacketKind::ChannelData && data.len() >= 4 {
            let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
            assert!(data.len() < 4 + len, "a complete ChannelData frame was refused");
        }
        return;
    };
    assert_eq!(kind, PacketKind::ChannelData);
    let number = frame.channel.get();
    assert!((ChannelNumber::MIN..=ChannelNumber::MAX_RFC5766).contains(&number));
    assert_eq!(ChannelNumber::new(number).is_some(), number <= ChannelNumber::MAX);
    let len = frame.payload.len();
    assert_eq!(usize::from(u16::from_be_bytes([data[2], data[3]])), len);
    assert_eq!(frame.payload, &data[channel_data::HEADER_LEN..channel_data::HEADER_LEN + len]);

    let mut written = Vec::new();
    channel_data::append(&mut written, frame.channel, frame.payload, false).expect("a parsed payload fits 16 bits");
    assert_eq!(written, data[..channel_data::HEADER_LEN + len]);
    let mut padded = Vec::new();
    let padded_len =
        channel_data::append(&mut padded, frame.channel, frame.payload, true).expect("a parsed payload fits 16 bits");
    assert_eq!(padded_len, padded.len());
    let headroom = channel_data::HEADER_LEN;
    let mut slot = vec![0xAA; headroom + len + channel_data::MAX_PADDING];
    slot[headroom..headroom + len].copy_from_slice(frame.payload);
    let (start, end) =
        channel_data::write_in_place(&mut slot, headroom, len, frame.channel, true).expect("room was left");
    assert_eq!(slot[start..end], padded[..], "in place and appended frames differ");

    let stream_len = demux::stream_frame_len(data).expect("a ChannelData header is a valid stream frame");
    let stream_len = stream_len.expect("four header bytes are enough to measure");
    assert_eq!(stream_len, channel_data::padded_frame_len(len));
    assert_eq!(stream_len, padded_len, "the encoder pads to what the framer measures");
    assert!(
        stream_len.is_multiple_of(4)
            && stream_len >= channel_data::HEADER_LEN + len
            && stream_len < channel_data::HEADER_LEN + len + 4
    );
});
