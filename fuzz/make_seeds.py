#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/seed-*.

The RFC 5769 samples from tests/vectors/*.hex (hex text, '#' comments), plus
a few hand-made messages per target, and for server_inputs a few operation
sequences in the byte layout `arbitrary` decodes its `Input` from (see
"server_inputs operation sequences" below). Run from anywhere; it overwrites
the seed-* files and leaves what libFuzzer found alone. The fuzz runs do not
need Python: the seeds are committed.
"""

import hashlib
import hmac
import pathlib
import struct
import zlib

FUZZ = pathlib.Path(__file__).resolve().parent
VECTORS = FUZZ.parent / "tests" / "vectors"
COOKIE = 0x2112A442
TID = bytes(range(1, 13))


def vector(path):
    text = path.read_text()
    return bytes(
        int(byte, 16)
        for line in text.splitlines()
        if not line.startswith("#")
        for byte in line.split()
    )


def attr(typ, value):
    pad = (-len(value)) % 4
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * pad


def message(typ, attrs, tid=TID, cookie=COOKIE, key=None, fingerprint=False):
    body = b"".join(attrs)

    def header(length):
        return struct.pack("!HHI", typ, length, cookie) + tid

    if key is not None:
        mac = hmac.new(key, header(len(body) + 24) + body, hashlib.sha1).digest()
        body += attr(0x0008, mac)
    if fingerprint:
        crc = zlib.crc32(header(len(body) + 8) + body) ^ 0x5354554E
        body += attr(0x8028, struct.pack("!I", crc))
    return header(len(body)) + body


def xor_v4(ip, port):
    x = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", COOKIE)))
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + x


def xor_v6(ip, port, tid=TID):
    mask = struct.pack("!I", COOKIE) + tid
    return struct.pack("!BBH", 0, 2, port ^ (COOKIE >> 16)) + bytes(a ^ b for a, b in zip(ip, mask))


def channel_data(number, payload, pad=False):
    frame = struct.pack("!HH", number, len(payload)) + payload
    return frame + b"\0" * ((-len(frame)) % 4 if pad else 0)


PEER = xor_v4(bytes([8, 8, 8, 8]), 1000)
PEER6 = xor_v6(bytes.fromhex("26064700000000000000000000001111"), 4000)
KEY = hashlib.md5(b"alice:example.org:alice-password").digest()

HAND_MADE = {
    "binding": message(0x0001, []),
    "binding-fingerprint": message(0x0001, [attr(0x8022, b"seed")], fingerprint=True),
    "binding-rfc3489": message(0x0001, [], cookie=0x01020304),
    "allocate": message(0x0003, [attr(0x0019, b"\x11\0\0\0"), attr(0x000D, struct.pack("!I", 600))]),
    "allocate-even-port": message(0x0003, [attr(0x0019, b"\x11\0\0\0"), attr(0x0018, b"\x80")]),
    "allocate-signed": message(
        0x0003,
        [attr(0x0019, b"\x11\0\0\0"), attr(0x0006, b"alice"), attr(0x0014, b"example.org"), attr(0x0015, b"n" * 27)],
        key=KEY,
        fingerprint=True,
    ),
    "refresh-zero": message(0x0004, [attr(0x000D, b"\0\0\0\0")]),
    "create-permission": message(0x0008, [attr(0x0012, PEER), attr(0x0012, PEER6)]),
    "channel-bind": message(0x0009, [attr(0x000C, b"\x40\x00\0\0"), attr(0x0012, PEER)]),
    "send": message(0x0016, [attr(0x0012, PEER), attr(0x0013, b"hello")]),
    "error-420": message(0x0111, [attr(0x0009, b"\0\0\x04\x14Unknown"), attr(0x000A, b"\x7f\xff\x00\x30")]),
    "unknown-required": message(0x0001, [attr(0x7777, b""), attr(0xC001, b"opt")]),
    "sha256": message(0x0001, [attr(0x001C, b"\x11" * 32)], fingerprint=True),
}
CHANNEL_DATA = {
    "cd-empty": channel_data(0x4000, b""),
    "cd-hello": channel_data(0x4001, b"hello"),
    "cd-padded": channel_data(0x4FFF, b"abc", pad=True),
    "cd-rfc5766": channel_data(0x7A6B, b"x"),
    "cd-truncated": channel_data(0x4000, b"abcdef")[:7],
}


# ---------------------------------------------------------------------------
# server_inputs operation sequences
#
# server_inputs decodes its input with `arbitrary` 1.x: integers little-endian,
# a bool from the low bit of a byte, an enum from a u32 x as variant
# (x * count) >> 32, a Vec as elements each preceded by a 1 byte and ended by a
# 0 byte, structs and variants as their fields in order. The variant lists
# below are the enums of fuzz/fuzz_targets/server_inputs.rs in declaration
# order and must change with them; a seed that decodes differently still
# fuzzes, but no longer reaches what its name says (FUZZ_STATS=1 shows it).
# ---------------------------------------------------------------------------

OP = [
    "Request", "Datagram", "ChannelData", "Peer", "LargePeer", "Icmp", "Advance", "Timeout", "ConnectionClosed",
    "PeerConnected", "PeerAccepted", "PairClosed", "PairTraffic", "PortInUse",
    "Wake",
]
RELAY_IPS = ["Listener", "V4", "Both"]
STEP = ["Millis", "Seconds", "Minutes"]
METHOD = [
    "Binding", "Allocate", "Refresh", "CreatePermission", "ChannelBind", "Send", "Connect", "ConnectionBind", "Other",
]
CLASS = ["Usual", "Indication", "Response"]
ATTR = [
    "RequestedTransport", "Lifetime", "XorPeer", "ChannelNumber", "Data", "EvenPort", "ReservationToken",
    "RequestedFamily", "AdditionalFamily", "DontFragment", "ConnectionId", "Raw",
]
PROTOCOL = ["Udp", "Tcp", "Other"]
PEER = ["Known", "V4", "V6"]
CHANNEL = ["Low", "Raw"]
CONNECTION_ID = ["Known", "Raw"]
AUTH = ["Unsigned", "Signed", "WrongKey", "ForgedNonce"]
WHO = ["Static", "Rest"]
SCHEME = ["Rfc5389", "Sha256", "Md5"]

# Indices into server_inputs.rs's CLIENTS, PEERS and RELAY_IPS.
UDP_CLIENT, TCP_CONTROL, TLS_DATA, TCP_DATA = 0, 2, 3, 6
PEER_8888, PEER_1111 = 0, 1
LISTENER_V4 = 0


def u8(value):
    return struct.pack("<B", value)


def u16(value):
    return struct.pack("<H", value)


def flag(value):
    return u8(1 if value else 0)


def variant(names, name, *fields):
    index, count = names.index(name), len(names)
    # The least x with (x * count) >> 32 == index.
    return struct.pack("<I", ((index << 32) + count - 1) // count) + b"".join(fields)


def elements(items):
    return b"".join(b"\x01" + item for item in items) + b"\x00"


def setup(authenticated, max_bps=None, max_tcp_peer_connections=3, tcp_per_ip=0, dont_fragment_unsupported=False):
    bps = flag(False) if max_bps is None else flag(True) + u16(max_bps)
    return (
        flag(authenticated)
        + flag(False)  # rfc3489
        + flag(False)  # reason_phrases
        + flag(False)  # rfc5766_channels
        + variant(RELAY_IPS, "Listener")
        + u8(0)  # user_quota: no limit
        + u8(0)  # total_quota: no limit
        + u8(4)  # max_permissions
        + u8(4)  # max_channels
        + bps
        + u8(max_tcp_peer_connections)
        + u8(tcp_per_ip)  # 0: no limit
        + u8(0)  # tcp_total: no limit
        + flag(dont_fragment_unsupported)
    )


def unsigned():
    return variant(AUTH, "Unsigned")


def signed(scheme, userhash=False, user=0):
    fields = () if scheme == "Rfc5389" else (flag(userhash),)
    return variant(AUTH, "Signed", variant(WHO, "Static", u8(user)), variant(SCHEME, scheme, *fields))


def request(client, method, attrs, auth, fingerprint=False):
    body = (
        variant(METHOD, method)
        + variant(CLASS, "Usual")
        + flag(False)  # retransmit
        + elements(attrs)
        + auth
        + flag(fingerprint)
    )
    return variant(OP, "Request", u8(client), body)


def requested_transport(protocol):
    return variant(ATTR, "RequestedTransport", variant(PROTOCOL, protocol))


def xor_peer(known):
    return variant(ATTR, "XorPeer", variant(PEER, "Known", u8(known)))


def xor_peer_v4(ip, port):
    return variant(ATTR, "XorPeer", variant(PEER, "V4", bytes(ip), u16(port)))


def learnt_connection_id(index):
    return variant(ATTR, "ConnectionId", variant(CONNECTION_ID, "Known", u8(index)))


def advance_seconds(seconds):
    return variant(OP, "Advance", variant(STEP, "Seconds", u16(seconds)))


def peer_connected(established, connection=0):
    return variant(OP, "PeerConnected", u8(connection), flag(established))


def peer_accepted(known, allocation=0):
    return variant(OP, "PeerAccepted", u8(allocation), variant(PEER, "Known", u8(known)))


def pair_traffic(to_peer, to_client, connection=0):
    return variant(OP, "PairTraffic", u8(connection), u16(to_peer), u16(to_client))


def peer_datagram(known, payload, allocation=0):
    return variant(OP, "Peer", u8(allocation), variant(PEER, "Known", u8(known)), elements(bytes([b]) for b in payload))


def icmp(known, icmp_type, icmp_code, mtu=0, allocation=0):
    return variant(
        OP, "Icmp", u8(allocation), variant(PEER, "Known", u8(known)), flag(False), u8(icmp_type), u8(icmp_code),
        struct.pack("<I", mtu),
    )


def lifetime(seconds):
    return variant(ATTR, "Lifetime", struct.pack("<I", seconds))


def channel_number(number):
    return variant(ATTR, "ChannelNumber", variant(CHANNEL, "Raw", u16(number)))


def port_in_use(ip, port):
    return variant(OP, "PortInUse", u8(ip), u8(port))


def sequence(authenticated, ops, **limits):
    return setup(authenticated, **limits) + elements(ops)


def rfc6062(auth):
    """A TCP allocation, a Connect its peer answers, ConnectionBind over TCP
    and pair traffic, a peer connecting in, ConnectionBind over TLS, a second
    Connect that fails, one left to time out, and the control connection
    closing with the pairs still up."""
    return [
        request(TCP_CONTROL, "Allocate", [requested_transport("Tcp")], auth, fingerprint=True),
        request(TCP_CONTROL, "CreatePermission", [xor_peer(PEER_8888)], auth),
        request(TCP_CONTROL, "Connect", [xor_peer(PEER_1111)], auth, fingerprint=True),
        peer_connected(True),
        request(TCP_DATA, "ConnectionBind", [learnt_connection_id(0)], auth),
        pair_traffic(1000, 3000),
        peer_accepted(PEER_8888),
        request(TLS_DATA, "ConnectionBind", [learnt_connection_id(1)], auth),
        pair_traffic(500, 500, connection=1),
        request(TCP_CONTROL, "Connect", [xor_peer_v4([9, 9, 9, 9], 53)], auth),
        peer_connected(False),
        request(TCP_CONTROL, "Connect", [xor_peer_v4([9, 9, 9, 9], 53)], auth),
        advance_seconds(31),
        variant(OP, "Timeout"),
        variant(OP, "ConnectionClosed", u8(TCP_CONTROL)),
    ]


def challenge_then(ops):
    """An unsigned Allocate first, whose 401 gives the nonce and the
    password algorithms the signed requests use."""
    return [request(TCP_CONTROL, "Allocate", [requested_transport("Tcp")], unsigned())] + ops


def udp_expiry():
    """Seven of the eight ports of the listener's pool in use, so the
    Allocate gets the eighth, retrying unless the pool offers it first; a
    permission and a channel, peer data both ways, an ICMP error relayed, a
    Refresh to an hour; then the permissions expire, the channel, its
    five-minute guard, and at last the allocation."""
    return [port_in_use(LISTENER_V4, port) for port in range(7)] + [
        request(UDP_CLIENT, "Allocate", [requested_transport("Udp")], unsigned()),
        request(UDP_CLIENT, "CreatePermission", [xor_peer(PEER_8888)], unsigned()),
        request(UDP_CLIENT, "ChannelBind", [channel_number(0x4000), xor_peer(PEER_1111)], unsigned()),
        peer_datagram(PEER_8888, b"data"),
        peer_datagram(PEER_1111, b"channel"),
        icmp(PEER_8888, 3, 4, mtu=1200),
        request(UDP_CLIENT, "Refresh", [lifetime(3600)], unsigned()),
        advance_seconds(301),
        variant(OP, "Timeout"),
        advance_seconds(300),
        variant(OP, "Timeout"),
        advance_seconds(300),
        variant(OP, "Timeout"),
        advance_seconds(3000),
        variant(OP, "Timeout"),
    ]


def refresh_shorter():
    """An allocation for an hour refreshed to the default ten minutes, a
    permission, then the driver sleeping from deadline to deadline: the
    permission expires, then the allocation, at the refreshed time."""
    return [
        request(UDP_CLIENT, "Allocate", [requested_transport("Udp"), lifetime(3600)], unsigned()),
        request(UDP_CLIENT, "Refresh", [], unsigned()),
        request(UDP_CLIENT, "CreatePermission", [xor_peer(PEER_8888)], unsigned()),
        variant(OP, "Wake"),
        variant(OP, "Wake"),
        variant(OP, "Wake"),
    ]


def refused_relays():
    """An Allocate whose only free port is taken too (the core gives up
    after 16 tries), one with DONT-FRAGMENT where it cannot be set, and a
    data connection over the per-IP connection limit."""
    return [port_in_use(LISTENER_V4, port) for port in range(8)] + [
        request(UDP_CLIENT, "Allocate", [requested_transport("Udp")], unsigned()),
        port_in_use(LISTENER_V4, 0),
        request(1, "Allocate", [requested_transport("Udp"), variant(ATTR, "DontFragment")], unsigned()),
        request(1, "Allocate", [requested_transport("Udp")], unsigned()),
        request(TCP_CONTROL, "Allocate", [requested_transport("Tcp")], unsigned()),
        request(TCP_DATA, "ConnectionBind", [learnt_connection_id(0)], unsigned()),
    ]


OPERATION_SEQUENCES = {
    "ops-udp-expiry": sequence(False, udp_expiry()),
    "ops-refresh-shorter": sequence(False, refresh_shorter()),
    "ops-refused-relays": sequence(False, refused_relays(), tcp_per_ip=1, dont_fragment_unsupported=True),
    "ops-tcp-relay": sequence(False, rfc6062(unsigned())),
    "ops-tcp-relay-paced": sequence(False, rfc6062(unsigned()), max_bps=2000),
    "ops-tcp-relay-sha256": sequence(True, challenge_then(rfc6062(signed("Sha256", userhash=True)))),
    "ops-tcp-relay-md5": sequence(True, challenge_then(rfc6062(signed("Rfc5389")))),
    "ops-allocate-sha256": sequence(
        True,
        [
            request(0, "Allocate", [requested_transport("Udp")], unsigned()),
            request(0, "Allocate", [requested_transport("Udp")], signed("Sha256")),
            request(1, "Allocate", [requested_transport("Udp")], signed("Sha256", userhash=True, user=1)),
            request(0, "CreatePermission", [xor_peer(PEER_8888)], signed("Md5", userhash=True)),
            request(1, "Refresh", [], signed("Rfc5389", user=1), fingerprint=True),
        ],
    ),
}


# proxy_header: what a load balancer sends first (HAProxy's PROXY protocol
# specification), each followed by the Binding request it carries.
PROXY_V2_SIGNATURE = b"\r\n\r\n\0\r\nQUIT\n"


def proxy_v2(command, family, block):
    return PROXY_V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(block)) + block


PROXY_INET = bytes([192, 0, 2, 10, 198, 51, 100, 1]) + struct.pack("!HH", 50000, 3478)
PROXY_INET6 = bytes(range(16)) + bytes(range(16, 32)) + struct.pack("!HH", 443, 5349)
PROXY_HEADERS = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 3478\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::10 2001:db8::1 65535 3478\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v2-inet": proxy_v2(0x21, 0x11, PROXY_INET),
    "v2-inet6-tlvs": proxy_v2(0x21, 0x21, PROXY_INET6 + b"\x01\x00\x09stun.turn" + b"\x04\x00\x02\0\0"),
    "v2-local": proxy_v2(0x20, 0x00, b""),
}


def write(target, name, data):
    directory = FUZZ / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{name}").write_bytes(data)


def main():
    vectors = {path.stem: vector(path) for path in sorted(VECTORS.glob("*.hex"))}
    messages = {**vectors, **HAND_MADE}
    for target in ["stun_parse", "stun_roundtrip", "server_inputs"]:
        for name, data in messages.items():
            write(target, name, data)
    for name, data in {**CHANNEL_DATA, "binding": HAND_MADE["binding"]}.items():
        write("channel_data", name, data)
    for name, data in {**CHANNEL_DATA, **OPERATION_SEQUENCES}.items():
        write("server_inputs", name, data)
    # stream_framing: byte 0 counts the chunk-size bytes after it.
    stream = b"".join(vectors.values()) + channel_data(0x4001, b"hello", pad=True) + HAND_MADE["send"]
    write("stream_framing", "whole", b"\0" + stream)
    write("stream_framing", "bytewise", b"\x01\x00" + stream)
    write("stream_framing", "mixed", b"\x03\x06\x00\x20" + stream)
    write("stream_framing", "lost-framing", b"\x01\x02" + channel_data(0x4000, b"ab", pad=True) + b"\xff\xff")
    for name, data in PROXY_HEADERS.items():
        write("proxy_header", name, data + HAND_MADE["binding"])
    write("stream_framing", "unaligned", b"\0" + HAND_MADE["binding"][:3] + b"\x03" + HAND_MADE["binding"][4:])


if __name__ == "__main__":
    main()
