//! The names of everything a worker polls, as one enum packed into mio's
//! `usize` token: a kind in the top byte, its index or id below. Every
//! socket is registered under [`Source::token`] and every event is read
//! back with [`Source::from_token`], so no two kinds can meet and none is
//! told apart by the order of match arms.

use crate::proto::allocation::RelayId;
use crate::proto::tcp_relay::ConnectionId;

// The kinds take the top byte and ids up to 56 bits below it.
const _: () = assert!(usize::BITS == 64, "tokens pack a kind and a 56-bit id into a usize");

const KIND_SHIFT: u32 = 56;
const ID_MASK: usize = (1 << KIND_SHIFT) - 1;

/// What a token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The worker's waker: shutdown, drain, handed-over connections.
    Waker,
    /// A UDP listen socket, by index.
    Udp(usize),
    /// A TCP listen socket, by index.
    TcpListener(usize),
    /// A TLS listen socket, by index.
    TlsListener(usize),
    /// A client's TCP or TLS connection, by its key in the worker's slab.
    Connection(usize),
    /// An allocation's UDP relay socket.
    Relay(RelayId),
    /// An RFC 6062 allocation's listening socket.
    TcpRelayListener(RelayId),
    /// The peer side of an RFC 6062 data connection pair.
    PeerSide(ConnectionId),
    /// The client side of a pair.
    ClientSide(ConnectionId),
}

impl Source {
    pub fn token(self) -> mio::Token {
        let (kind, id) = match self {
            Self::Waker => (0xFF, 0),
            Self::Udp(index) => (1, index),
            Self::TcpListener(index) => (2, index),
            Self::TlsListener(index) => (3, index),
            Self::Connection(key) => (4, key),
            Self::Relay(relay) => (5, relay.0),
            Self::TcpRelayListener(relay) => (6, relay.0),
            Self::PeerSide(id) => (7, id.0 as usize),
            Self::ClientSide(id) => (8, id.0 as usize),
        };
        debug_assert!(id <= ID_MASK, "ids stay below 2^56");
        mio::Token((kind << KIND_SHIFT) | (id & ID_MASK))
    }

    pub fn from_token(token: mio::Token) -> Option<Self> {
        let id = token.0 & ID_MASK;
        let connection = || u32::try_from(id).ok().map(ConnectionId);
        Some(match token.0 >> KIND_SHIFT {
            0xFF if id == 0 => Self::Waker,
            1 => Self::Udp(id),
            2 => Self::TcpListener(id),
            3 => Self::TlsListener(id),
            4 => Self::Connection(id),
            5 => Self::Relay(RelayId(id)),
            6 => Self::TcpRelayListener(RelayId(id)),
            7 => Self::PeerSide(connection()?),
            8 => Self::ClientSide(connection()?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_do_not_overlap() {
        let sources = [
            Source::Waker,
            Source::Udp(0),
            Source::Udp(7),
            Source::TcpListener(0),
            Source::TlsListener(3),
            Source::Connection(0),
            Source::Connection(1 << 40),
            Source::Relay(RelayId(0)),
            Source::Relay(RelayId((1 << 34) - 1)),
            Source::TcpRelayListener(RelayId(5)),
            Source::PeerSide(ConnectionId(0)),
            Source::PeerSide(ConnectionId(u32::MAX)),
            Source::ClientSide(ConnectionId(0)),
            Source::ClientSide(ConnectionId(u32::MAX)),
        ];
        for source in sources {
            assert_eq!(Source::from_token(source.token()), Some(source));
        }
        let mut tokens: Vec<usize> = sources.iter().map(|s| s.token().0).collect();
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), sources.len(), "no two sources share a token");
        assert_eq!(Source::from_token(mio::Token(0)), None);
        assert_eq!(Source::from_token(mio::Token(9 << KIND_SHIFT)), None);
    }
}
