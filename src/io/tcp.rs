//! One client TCP or TLS connection: a read buffer cut into frames by the
//! STUN or ChannelData length (RFC 8656 §12.5), and a write queue. Over TLS
//! the same framing runs on the decrypted stream (`stream.rs` and `tls.rs`
//! do the rest).
//!
//! Buffers start empty and grow to the largest frame seen, at most one
//! 64 KiB STUN message plus a read chunk, so idle connections stay cheap.

use std::io;

use super::stream::Stream;
use crate::proto::FiveTuple;
use crate::proto::demux::{self, StreamFramer};

/// Bytes asked of the socket per read when no larger frame is in progress.
const READ_CHUNK: usize = 4096;
/// Bytes read from one connection per wake-up, so one busy client cannot
/// starve the rest of the worker.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes queued for a client that does not read before tern gives up on it.
pub const WRITE_QUEUE_LIMIT: usize = 1024 * 1024;

/// Why a connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum Closed {
    #[error("closed by the client")]
    Eof,
    /// The stream lost its framing; nothing after this can be trusted.
    #[error("lost framing: neither STUN nor ChannelData")]
    Framing,
    #[error("client does not read its responses")]
    WriteQueueFull,
    #[error("idle")]
    Idle,
    #[error("TLS handshake not finished in time")]
    HandshakeTimeout,
    #[error("{0}")]
    ProxyHeader(crate::io::proxy::HeaderFailure),
    #[error("PROXY header not whole in time")]
    ProxyHeaderTimeout,
    /// Its PROXY header named a client over the connection limits.
    #[error("refused: connection limit")]
    Refused,
    #[error("{0}")]
    Io(io::Error),
}

pub struct TcpConnection {
    pub stream: Stream,
    pub tuple: FiveTuple,
    /// When the connection was accepted, for the TLS handshake timeout.
    pub accepted: std::time::Instant,
    /// The worker counted the end of this connection's TLS handshake.
    pub handshake_done: bool,
    /// The core admitted the connection (`handle_connection_opened`): at
    /// once, or on a PROXY listener once its header named the client.
    pub admitted: bool,
    inbuf: StreamFramer,
    pub outbuf: Vec<u8>,
    out_pos: usize,
    /// Wall time of the last byte received, for the idle timeout.
    pub last_received: std::time::Instant,
    /// The client shut down its sending side; once the write queue is
    /// flushed the connection is closed.
    pub peer_closed: bool,
    /// When the worker checks its idle and handshake deadlines next.
    pub timer: Option<std::time::Instant>,
}

/// A connection out of STUN framing: its socket and TLS session, the
/// bytes read but not framed, and the bytes queued but not written.
pub struct Detached {
    pub stream: Stream,
    pub tuple: FiveTuple,
    pub unread: Vec<u8>,
    pub unsent: Vec<u8>,
}

/// Result of reading from a connection.
pub enum ReadStatus {
    /// Read until the socket had no more.
    Drained,
    /// Stopped at the read budget; the socket may have more.
    MoreAvailable,
    /// A frame's handler answered [`Next::Unframed`]: what follows it on the
    /// stream is not STUN, and stays unread in the buffer.
    Unframed,
}

/// What follows a frame on the stream, as its handler decides.
pub enum Next {
    /// More STUN and ChannelData frames.
    Frame,
    /// Raw bytes (an RFC 6062 data connection after its ConnectionBind).
    Unframed,
}

impl TcpConnection {
    pub fn new(stream: Stream, tuple: FiveTuple, now: std::time::Instant) -> Self {
        Self {
            stream,
            tuple,
            accepted: now,
            handshake_done: false,
            admitted: true,
            inbuf: StreamFramer::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            last_received: now,
            peer_closed: false,
            timer: None,
        }
    }

    /// A connection on a PROXY listener, admitted once its header is read;
    /// `tuple` names its peer, the load balancer, until then.
    pub fn awaiting_proxy_header(stream: Stream, tuple: FiveTuple, now: std::time::Instant) -> Self {
        Self { admitted: false, ..Self::new(stream, tuple, now) }
    }

    /// A connection whose first bytes were read elsewhere (by the worker
    /// that handed it over, which also counted its TLS handshake); they are
    /// framed before anything else is read.
    pub fn handed_over(detached: Detached, now: std::time::Instant) -> Self {
        let Detached { stream, tuple, unread, .. } = detached;
        let handshake_done = stream.is_tls();
        Self { inbuf: StreamFramer::with_bytes(unread), handshake_done, ..Self::new(stream, tuple, now) }
    }

    /// Reads what the socket has and hands each complete frame to `on_frame`
    /// together with the write queue, where answers go.
    pub fn read_frames(
        &mut self,
        now: std::time::Instant,
        mut on_frame: impl FnMut(&FiveTuple, &[u8], &mut Vec<u8>) -> Next,
    ) -> Result<ReadStatus, Closed> {
        // Bytes handed over with the connection come first.
        if self.consume_frames(&mut on_frame)? {
            return Ok(ReadStatus::Unframed);
        }
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                return Ok(ReadStatus::MoreAvailable);
            }
            // Read at least what completes the frame in progress, so a large
            // STUN message arrives in one pass.
            let need = self.inbuf.missing().map_err(|_| Closed::Framing)?;
            let spare = self.inbuf.spare(need.max(READ_CHUNK).min(budget));
            let read = self.stream.read(spare);
            match read {
                Ok(0) => return Err(Closed::Eof),
                Ok(n) => {
                    self.inbuf.commit(n);
                    budget = budget.saturating_sub(n);
                    self.last_received = now;
                    if self.consume_frames(&mut on_frame)? {
                        return Ok(ReadStatus::Unframed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Closed::Io(e)),
            }
            if self.queued() > WRITE_QUEUE_LIMIT {
                return Err(Closed::WriteQueueFull);
            }
        }
    }

    /// Hands complete frames to `on_frame`; returns whether one of them
    /// ended the framing.
    fn consume_frames(
        &mut self,
        on_frame: &mut impl FnMut(&FiveTuple, &[u8], &mut Vec<u8>) -> Next,
    ) -> Result<bool, Closed> {
        while let Some(frame) = self.inbuf.next_frame().map_err(|_| Closed::Framing)? {
            if matches!(on_frame(&self.tuple, frame, &mut self.outbuf), Next::Unframed) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What an RFC 6062 data connection carries on with once it is bound,
    /// or another worker once it is handed over.
    pub fn detach(mut self) -> Detached {
        self.outbuf.drain(..self.out_pos);
        let unread = self.inbuf.take_unframed();
        Detached { stream: self.stream, tuple: self.tuple, unread, unsent: self.outbuf }
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    /// Nothing left to send: no queued bytes and no TLS record pending.
    pub fn drained(&self) -> bool {
        self.queued() == 0 && !self.stream.wants_write()
    }

    /// Whether this is a TLS connection still in its handshake.
    pub fn handshaking(&self) -> bool {
        self.stream.is_handshaking()
    }

    /// Before closing a TLS connection: close_notify, so the client sees a
    /// clean end rather than a truncation.
    pub fn close_notify(&mut self) {
        self.stream.close_notify();
    }

    /// Writes as much of the queue as the socket takes.
    pub fn flush(&mut self) -> Result<(), Closed> {
        while self.out_pos < self.outbuf.len() {
            let pending = &self.outbuf[self.out_pos..];
            let message = if self.stream.is_tls() {
                // The queue holds whole frames, so this cuts at the next
                // boundary; TLS writes a message per record (see tls.rs).
                match demux::first_frame(pending) {
                    Ok(Some(frame)) => frame,
                    _ => pending,
                }
            } else {
                pending
            };
            match self.stream.write(message) {
                Ok(0) => return Err(Closed::Eof),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Closed::Io(e)),
            }
        }
        // Records from the handshake, or left over when the socket was full.
        self.stream.write_pending().map_err(Closed::Io)?;
        if self.out_pos == self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
        } else if self.out_pos > self.outbuf.len() / 2 {
            self.outbuf.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }
}
