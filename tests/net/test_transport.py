"""The handshake over in-memory streams, on trio's virtual clock: no sockets, exact timeouts."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket

from p2pnode.core.identity import Identity
from p2pnode.core.records import PROTOCOL_VERSION, NodeRecord, SignedRecord, seal_record
from p2pnode.core.wire import Auth, Hello, WireLimits, decode, encode, handshake_transcript
from p2pnode.errors import BadSignature, DecodeError, PeerRejected, PeerTimeout
from p2pnode.net.transport import PEER_PATH, CloseCode, HandshakeConfig, handshake

TIMEOUT = 5.0
WALL = 1_800_000_000.0


def signed_record(identity: Identity) -> SignedRecord:
    return seal_record(identity, NodeRecord(peer_id=identity.peer_id, seq=1, issued_at=WALL, lifetime=60.0))


def config(identity: Identity, network: str = "open") -> HandshakeConfig:
    return HandshakeConfig(identity, network, TIMEOUT, WireLimits())


async def ws_pair(nursery: trio.Nursery):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    sides = {}

    async def server_side():
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        sides["server"] = await request.accept()

    async with trio.open_nursery() as opening:
        opening.start_soon(server_side)
        sides["client"] = await trio_websocket.wrap_client_stream(nursery, client_stream, "peer", PEER_PATH)
    return sides["client"], sides["server"]


async def run_handshake(ws, identity: Identity, *, initiator: bool, network: str = "open"):
    return await handshake(
        ws, config(identity, network), signed_record(identity), initiator=initiator, wall_now=lambda: WALL, outbox=8
    )


async def linked_pair(nursery: trio.Nursery):
    """Alice (dialling) and Bob, handshaken over in-memory websockets.

    Returns (alice, bob, alice's link, bob's link, client websocket, server websocket)."""
    client, server = await ws_pair(nursery)
    alice, bob = Identity.generate(), Identity.generate()
    links = {}

    async def side(name, ws, identity, initiator):
        links[name] = await run_handshake(ws, identity, initiator=initiator)

    async with trio.open_nursery() as inner:
        inner.start_soon(side, "alice", client, alice, True)
        inner.start_soon(side, "bob", server, bob, False)
    return alice, bob, links["alice"], links["bob"], client, server


async def test_both_sides_learn_the_other_peer_and_its_record(nursery):
    alice, bob, alice_link, bob_link, _, _ = await linked_pair(nursery)
    assert alice_link.peer_id == bob.peer_id and alice_link.initiator
    assert bob_link.peer_id == alice.peer_id and not bob_link.initiator
    assert bob_link.record.record.peer_id == alice.peer_id


async def test_a_silent_peer_times_out_at_the_handshake_deadline(nursery, autojump_clock):
    client, server = await ws_pair(nursery)
    start = trio.current_time()
    with pytest.raises(PeerTimeout):
        await run_handshake(server, Identity.generate(), initiator=False)
    assert trio.current_time() - start == pytest.approx(TIMEOUT)


async def _impostor(ws, hello: Hello, make_auth) -> int | None:
    """Play the dialling side by hand: send ``hello``, read theirs, send ``make_auth(theirs)``; return the close code."""
    await ws.send_message(encode(hello))
    theirs = decode(await ws.get_message())
    await ws.send_message(encode(make_auth(theirs)))
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed as closed:
        return closed.reason.code


async def test_claiming_another_peers_id_fails_with_a_policy_close(nursery):
    client, server = await ws_pair(nursery)
    victim, mallory, bob = Identity.generate(), Identity.generate(), Identity.generate()
    hello = Hello(PROTOCOL_VERSION, victim.peer_id, b"\x01" * 32, "open")

    def forged_auth(theirs: Hello) -> Auth:
        # Mallory signs the right transcript, but with her own key.
        signature = mallory.sign(handshake_transcript(hello, theirs, True))
        return Auth(signature, signed_record(victim).envelope)

    codes = {}

    async def impostor():
        codes["impostor"] = await _impostor(client, hello, forged_auth)

    async with trio.open_nursery() as inner:
        inner.start_soon(impostor)
        with pytest.raises(BadSignature):
            await run_handshake(server, bob, initiator=False)
    assert codes["impostor"] == CloseCode.POLICY


async def test_a_replayed_auth_from_an_earlier_handshake_fails(nursery):
    alice, bob = Identity.generate(), Identity.generate()
    # First, a genuine handshake, whose Auth from alice we capture.
    captured = {}
    client, server = await ws_pair(nursery)

    async def alice_side():
        await run_handshake(client, alice, initiator=True)

    async def bob_side_capturing():
        hello = Hello(PROTOCOL_VERSION, bob.peer_id, b"\x02" * 32, "open")
        await server.send_message(encode(hello))
        theirs = decode(await server.get_message())
        await server.send_message(encode(Auth(bob.sign(handshake_transcript(theirs, hello, False)), signed_record(bob).envelope)))
        captured["auth"] = decode(await server.get_message())
        captured["hello"] = theirs

    async with trio.open_nursery() as inner:
        inner.start_soon(alice_side)
        inner.start_soon(bob_side_capturing)
    # Then Mallory replays alice's hello and auth to bob on a new connection: bob's nonce is fresh.
    client2, server2 = await ws_pair(nursery)
    async with trio.open_nursery() as inner:
        inner.start_soon(_impostor, client2, captured["hello"], lambda theirs: captured["auth"])
        with pytest.raises(BadSignature):
            await run_handshake(server2, bob, initiator=False)


@pytest.mark.parametrize(
    ("hello_changes", "code"),
    [({"version": PROTOCOL_VERSION + 1}, CloseCode.VERSION), ({"network": "0123456789abcdef"}, CloseCode.NETWORK)],
)
async def test_incompatible_peers_are_refused_with_a_reason(nursery, hello_changes, code):
    client, server = await ws_pair(nursery)
    stranger = Identity.generate()
    fields = {"version": PROTOCOL_VERSION, "peer_id": stranger.peer_id, "nonce": b"\x03" * 32, "network": "open"}
    fields.update(hello_changes)
    await client.send_message(encode(Hello(**fields)))
    with pytest.raises(PeerRejected) as refused:
        await run_handshake(server, Identity.generate(), initiator=False)
    assert refused.value.code == code
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await client.get_message()
    assert closed.value.reason.code == code


async def test_dialling_ourselves_is_refused(nursery):
    client, server = await ws_pair(nursery)
    me = Identity.generate()
    async with trio.open_nursery() as inner:
        async def dial_side():
            with pytest.raises(PeerRejected):
                await run_handshake(client, me, initiator=True)

        inner.start_soon(dial_side)
        with pytest.raises(PeerRejected) as refused:
            await run_handshake(server, me, initiator=False)
    assert refused.value.code == CloseCode.SELF


async def test_garbage_instead_of_hello_is_a_protocol_error(nursery):
    client, server = await ws_pair(nursery)
    await client.send_message(b"\xc1 this is not msgpack")
    with pytest.raises(DecodeError):
        await run_handshake(server, Identity.generate(), initiator=False)
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await client.get_message()
    assert closed.value.reason.code == CloseCode.PROTOCOL
