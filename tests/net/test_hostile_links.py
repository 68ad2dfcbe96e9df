"""A stranger misbehaving at the websocket level must not take the listener down."""

from __future__ import annotations

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from p2pnode.net.transport import PEER_PATH
from tests.net.helpers import Network, wait_all

pytestmark = pytest.mark.slow


async def test_a_ping_after_our_close_does_not_end_the_listener(nursery):
    """trio-websocket answers a ping that arrives after it sent Close, and wsproto refuses to send that pong
    (python-trio/trio-websocket#184). A stranger can provoke it: garbage makes us close, then it pings."""
    net = Network(nursery)
    node = await net.start("target")
    port = int(node.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target=PEER_PATH)))
    closed = False
    with trio.fail_after(10):
        while not closed:
            ws.receive_data(await stream.receive_some(65536))
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    await stream.send_all(ws.send(BytesMessage(data=b"\xc1garbage")))
                elif isinstance(event, CloseConnection):
                    payload, mask = b"boom", b"\x01\x02\x03\x04"
                    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    await stream.send_all(bytes([0x89, 0x80 | len(payload)]) + mask + masked)  # masked Ping
                    closed = True
        # Never answer the Close: wait until the server gives up on us and drops the connection.
        while await stream.receive_some(65536):
            pass
    await stream.aclose()
    # The node still accepts peers.
    newcomer = await net.start("newcomer", seeds=(node.url,))
    await wait_all([node, newcomer], lambda n: len(n.overlay.membership.alive()) == 1)
