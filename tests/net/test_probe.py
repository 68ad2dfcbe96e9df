"""Liveness of a quiet link, on trio's virtual clock: idle links are pinged, a silent peer is dropped."""

from __future__ import annotations

import pytest
import trio

from p2pnode.core.wire import Ping, Pong, Rumors, WireLimits, decode
from p2pnode.errors import PeerTimeout
from p2pnode.net.overlay import Overlay
from tests.net.helpers import overlay_config
from tests.net.test_transport import linked_pair


async def test_an_idle_link_is_pinged_and_a_silent_peer_times_out(nursery, autojump_clock):
    alice, _, link, bob_link, _, server = await linked_pair(nursery)
    config = overlay_config()
    overlay = Overlay(alice, config, lambda: {})
    nursery.start_soon(link.run_writer)
    start = trio.current_time()
    # Bob answers nothing (his side reads and decrypts raw frames): Alice pings once quiet, then gives up.
    pings = []

    async def silent_bob():
        while True:
            pings.append(decode(bob_link._decrypt.decrypt(await server.get_message())))

    nursery.start_soon(silent_bob)
    with pytest.raises(PeerTimeout):
        await overlay._probe_link(link)
    peers = config.peers
    elapsed = trio.current_time() - start
    assert peers.probe_interval + peers.probe_timeout < elapsed <= peers.probe_interval + peers.probe_timeout + peers.probe_interval
    assert pings and all(p == Ping() for p in pings)


async def test_a_ping_is_answered_and_any_message_counts_as_life(nursery, autojump_clock):
    _, _, alice_link, bob_link, client, _ = await linked_pair(nursery)
    nursery.start_soon(bob_link.run_writer)
    await trio.sleep(10)
    await alice_link.send(Ping())
    await alice_link.send(Pong())
    await alice_link.send(Rumors(()))  # the first message receive() returns
    message = await bob_link.receive(WireLimits())
    assert message.items == ()
    assert bob_link.last_received == trio.current_time()
    assert decode(alice_link._decrypt.decrypt(await client.get_message())) == Pong()
