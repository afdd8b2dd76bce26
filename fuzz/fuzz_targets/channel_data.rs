//! `channel_data`: any bytes through `ChannelData::parse` and
//! `demux::classify`.
//!
//! Checks that neither panics; that an accepted frame has a channel number
//! in RFC 5766's range, a payload that is exactly the announced bytes after
//! the header, and a first byte that `classify` calls ChannelData; that
//! writing the header back reproduces the frame; and that the stream length
//! `demux::stream_frame_len` gives for it covers the payload and its padding.

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

    let mut header = [0u8; channel_data::HEADER_LEN];
    channel_data::write_header(&mut header, frame.channel, len as u16);
    assert_eq!(header, data[..channel_data::HEADER_LEN]);

    let stream_len = demux::stream_frame_len(data).expect("a ChannelData header is a valid stream frame");
    let stream_len = stream_len.expect("four header bytes are enough to measure");
    assert_eq!(stream_len, channel_data::padded_frame_len(len));
    assert!(
        stream_len.is_multiple_of(4)
            && stream_len >= channel_data::HEADER_LEN + len
            && stream_len < channel_data::HEADER_LEN + len + 4
    );
});
