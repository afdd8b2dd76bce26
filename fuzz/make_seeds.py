#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/seed-*.

The RFC 5769 samples from tests/vectors/*.hex (hex text, '#' comments), plus
a few hand-made messages per target. Run from anywhere; it overwrites the
seed-* files and leaves what libFuzzer found alone. The fuzz runs do not need
Python: the seeds are committed.
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
    for name, data in CHANNEL_DATA.items():
        write("server_inputs", name, data)
    # stream_framing: byte 0 counts the chunk-size bytes after it.
    stream = b"".join(vectors.values()) + channel_data(0x4001, b"hello", pad=True) + HAND_MADE["send"]
    write("stream_framing", "whole", b"\0" + stream)
    write("stream_framing", "bytewise", b"\x01\x00" + stream)
    write("stream_framing", "mixed", b"\x03\x06\x00\x20" + stream)
    write("stream_framing", "lost-framing", b"\x01\x02" + channel_data(0x4000, b"ab", pad=True) + b"\xff\xff")
    write("stream_framing", "unaligned", b"\0" + HAND_MADE["binding"][:3] + b"\x03" + HAND_MADE["binding"][4:])


if __name__ == "__main__":
    main()
