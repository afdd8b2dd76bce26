"""Drives tern with aioice, a third-party ICE stack (the one aiortc uses).

Usage: aioice_turn.py HOST PORT USER PASSWORD TRANSPORT COUNT

Allocates through aioice's TURN client over TRANSPORT (udp or tcp), sends
COUNT datagrams through the relay to a UDP echo peer on 127.0.0.1 (aioice
binds a channel for the peer and sends ChannelData), and waits for each
echo to come back through the relay. Then gathers ICE candidates with tern
as the STUN and TURN server. Prints one JSON object and exits 0 when every
datagram came back and both a server-reflexive and a relayed candidate were
gathered.
"""

import asyncio
import json
import sys

import aioice
from aioice.turn import create_turn_endpoint

TIMEOUT = 10.0


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.received = []
        self.event = asyncio.Event()
        self.expected = 0

    def datagram_received(self, data, addr):
        self.received.append((data, addr))
        if len(self.received) >= self.expected:
            self.event.set()


async def relay(host, port, user, password, transport, count):
    loop = asyncio.get_running_loop()
    peer_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    peer = peer_transport.get_extra_info("sockname")
    turn, receiver = await asyncio.wait_for(
        create_turn_endpoint(Receiver, (host, port), user, password, transport=transport), TIMEOUT
    )
    relayed = turn.get_extra_info("sockname")
    receiver.expected = count
    for i in range(count):
        turn.sendto(b"aioice %06d" % i, peer)
        # aioice binds the channel on the first send; pace the rest a little.
        await asyncio.sleep(0.002)
    try:
        await asyncio.wait_for(receiver.event.wait(), TIMEOUT)
    except asyncio.TimeoutError:
        pass
    payloads = sorted(data for data, _ in receiver.received)
    intact = payloads == [b"aioice %06d" % i for i in range(count)]
    sources = {addr for _, addr in receiver.received}
    turn.close()
    peer_transport.close()
    await asyncio.sleep(0.2)
    return {
        "relayed": list(relayed),
        "peer": list(peer),
        "sent": count,
        "received": len(receiver.received),
        "intact": intact,
        "sources": [list(s) for s in sources],
    }


async def gather(host, port, user, password, transport):
    connection = aioice.Connection(
        ice_controlling=True,
        components=1,
        stun_server=(host, port),
        turn_server=(host, port),
        turn_username=user,
        turn_password=password,
        turn_transport=transport,
        use_ipv6=False,
    )
    await asyncio.wait_for(connection.gather_candidates(), TIMEOUT)
    types = sorted({c.type for c in connection.local_candidates})
    await connection.close()
    return types


async def main():
    host, port, user, password, transport, count = sys.argv[1:7]
    port, count = int(port), int(count)
    report = await relay(host, port, user, password, transport, count)
    report["candidate_types"] = await gather(host, port, user, password, transport)
    print(json.dumps(report))
    ok = report["intact"] and {"srflx", "relay"} <= set(report["candidate_types"])
    sys.exit(0 if ok else 1)


asyncio.run(main())
