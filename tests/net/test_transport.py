"""The handshake over in-memory streams, on trio's virtual clock: no sockets, exact timeouts."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing
import trio_websocket
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pnode.core.identity import Identity
from p2pnode.core.noise import NoiseHandshake
from p2pnode.core.records import PROTOCOL_VERSION, NodeRecord, SignedRecord, seal_record
from p2pnode.core.wire import Auth, Rumors, WireLimits, auth_transcript, encode
from p2pnode.errors import BadSignature, PeerRejected, PeerTimeout, RemoteProtocolError
from p2pnode.net.transport import OPEN_NETWORK_KEY, PEER_PATH, CloseCode, HandshakeConfig, handshake

TIMEOUT = 5.0
WALL = 1_800_000_000.0


def signed_record(identity: Identity) -> SignedRecord:
    return seal_record(identity, NodeRecord(peer_id=identity.peer_id, seq=1, issued_at=WALL, lifetime=60.0))


def config(identity: Identity, network_key: bytes = OPEN_NETWORK_KEY) -> HandshakeConfig:
    return HandshakeConfig(identity, network_key, TIMEOUT, WireLimits())


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


async def run_handshake(ws, identity: Identity, *, initiator: bool, network_key: bytes = OPEN_NETWORK_KEY):
    return await handshake(
        ws, config(identity, network_key), signed_record(identity), initiator=initiator, wall_now=lambda: WALL,
        outbox=8,
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


def record_frames(ws) -> list[bytes]:
    """Keep a copy of every frame sent on ``ws`` (``ws.send_message.unrecorded`` sends one without keeping it)."""
    frames: list[bytes] = []
    original_send = ws.send_message

    async def recording_send(message):
        frames.append(message)
        await original_send(message)

    recording_send.unrecorded = original_send
    ws.send_message = recording_send
    return frames


class Impostor:
    """Plays the dialling side by hand over ``ws``: the Noise handshake with ``key``, then whatever Auth it likes."""

    def __init__(self, ws, key: bytes = OPEN_NETWORK_KEY) -> None:
        self.ws = ws
        self.noise = NoiseHandshake(initiator=True, psk=key, ephemeral=X25519PrivateKey.generate(), prologue=b"dcn-peer-link")
        self.sent: list[bytes] = []  # every frame, as it went over the wire

    async def send_frame(self, frame: bytes) -> None:
        self.sent.append(frame)
        await self.ws.send_message(frame)

    async def noise_handshake(self) -> None:
        await self.send_frame(self.noise.write_message())
        self.noise.read_message(await self.ws.get_message())
        self.encrypt, self.decrypt = self.noise.split()

    async def send_auth(self, auth: Auth) -> None:
        await self.send_frame(self.encrypt.encrypt(encode(auth)))

    async def close_code(self) -> int | None:
        try:
            while True:
                await self.ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code


async def test_claiming_another_peers_id_fails_with_a_policy_close(nursery):
    client, server = await ws_pair(nursery)
    victim, mallory, bob = Identity.generate(), Identity.generate(), Identity.generate()
    impostor = Impostor(client)
    codes = {}

    async def play():
        await impostor.noise_handshake()
        # Mallory signs this very connection's transcript, but with her own key, and claims the victim's id.
        signature = mallory.sign(auth_transcript(impostor.noise.handshake_hash, True))
        await impostor.send_auth(Auth(PROTOCOL_VERSION, victim.peer_id, signature, signed_record(victim).envelope))
        codes["impostor"] = await impostor.close_code()

    async with trio.open_nursery() as inner:
        inner.start_soon(play)
        with pytest.raises(BadSignature):
            await run_handshake(server, bob, initiator=False)
    assert codes["impostor"] == CloseCode.POLICY


async def test_a_replayed_auth_from_an_earlier_handshake_fails(nursery):
    alice, bob = Identity.generate(), Identity.generate()
    # First, a genuine handshake between alice and bob, whose frames from alice a recorder on the wire keeps.
    client, server = await ws_pair(nursery)
    recorded = record_frames(client)
    async with trio.open_nursery() as inner:
        inner.start_soon(functools.partial(run_handshake, client, alice, initiator=True))
        inner.start_soon(functools.partial(run_handshake, server, bob, initiator=False))
    assert len(recorded) == 2  # Noise message 1, then the encrypted Auth

    # Mallory replays alice's frames to bob on a new connection: bob's fresh ephemeral key changes every key.
    client2, server2 = await ws_pair(nursery)

    async def replay():
        await client2.send_message(recorded[0])
        await client2.get_message()
        await client2.send_message(recorded[1])

    async with trio.open_nursery() as inner:
        inner.start_soon(replay)
        with pytest.raises(RemoteProtocolError, match="cannot decrypt"):
            await run_handshake(server2, bob, initiator=False)


async def test_a_tampered_handshake_message_fails(nursery):
    client, server = await ws_pair(nursery)
    impostor = Impostor(client)
    first = impostor.noise.write_message()
    await client.send_message(first[:-1] + bytes([first[-1] ^ 1]))
    with pytest.raises(PeerRejected) as refused:
        await run_handshake(server, Identity.generate(), initiator=False)
    assert refused.value.code == CloseCode.NETWORK
    assert await impostor.close_code() == CloseCode.NETWORK


@pytest.mark.parametrize("their_key", [b"\x01" * 32, OPEN_NETWORK_KEY], ids=["other-key", "no-key"])
async def test_a_node_without_our_network_key_learns_nothing(nursery, their_key):
    """It is refused after its first message, with no byte of ours but the close: not our id, not our record."""
    client, server = await ws_pair(nursery)
    impostor = Impostor(client, their_key)
    received: list[bytes] = []

    async def stranger():
        await impostor.send_frame(impostor.noise.write_message())
        try:
            while True:
                received.append(await client.get_message())
        except trio_websocket.ConnectionClosed as closed:
            received.append(closed.reason.code)

    async with trio.open_nursery() as inner:
        inner.start_soon(stranger)
        with pytest.raises(PeerRejected) as refused:
            await run_handshake(server, Identity.generate(), initiator=False, network_key=b"\x07" * 32)
    assert refused.value.code == CloseCode.NETWORK
    assert received == [CloseCode.NETWORK]


async def test_nodes_sharing_a_network_key_link_and_the_dialler_of_another_network_is_told_why(nursery):
    key = b"\x07" * 32
    client, server = await ws_pair(nursery)
    async with trio.open_nursery() as inner:
        inner.start_soon(functools.partial(run_handshake, server, Identity.generate(), initiator=False, network_key=key))
        link = await run_handshake(client, Identity.generate(), initiator=True, network_key=key)
    assert link.peer_id
    client, server = await ws_pair(nursery)
    async with trio.open_nursery() as inner:

        async def keyed_listener():
            with pytest.raises(PeerRejected):
                await run_handshake(server, Identity.generate(), initiator=False, network_key=key)

        inner.start_soon(keyed_listener)
        with pytest.raises(PeerRejected) as refused:
            await run_handshake(client, Identity.generate(), initiator=True)
    assert refused.value.code == CloseCode.NETWORK


async def test_a_peer_of_another_protocol_version_is_refused_with_a_reason(nursery):
    client, server = await ws_pair(nursery)
    stranger = Identity.generate()
    impostor = Impostor(client)
    codes = {}

    async def play():
        await impostor.noise_handshake()
        signature = stranger.sign(auth_transcript(impostor.noise.handshake_hash, True))
        await impostor.send_auth(Auth(PROTOCOL_VERSION + 1, stranger.peer_id, signature, signed_record(stranger).envelope))
        codes["stranger"] = await impostor.close_code()

    async with trio.open_nursery() as inner:
        inner.start_soon(play)
        with pytest.raises(PeerRejected) as refused:
            await run_handshake(server, Identity.generate(), initiator=False)
    assert refused.value.code == codes["stranger"] == CloseCode.VERSION


async def test_messages_on_a_link_are_encrypted_and_tampering_is_detected(nursery):
    alice, bob, alice_link, bob_link, client, server = await linked_pair(nursery)
    secret = "the prompt nobody else may read"
    frames = record_frames(client)
    await alice_link.send(Rumors((secret.encode(),)))
    assert (await bob_link.receive(WireLimits())).items == (secret.encode(),)
    assert frames and secret.encode() not in frames[0]
    # A frame flipped in transit (or replayed) does not decrypt: the link fails with a protocol error.
    await client.send_message.unrecorded(frames[0][:-1] + bytes([frames[0][-1] ^ 1]))
    with pytest.raises(RemoteProtocolError, match="cannot decrypt"):
        await bob_link.receive(WireLimits())


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


async def test_garbage_instead_of_the_first_handshake_message_is_refused(nursery):
    client, server = await ws_pair(nursery)
    await client.send_message(b"\xc1 this is not a handshake")
    with pytest.raises(PeerRejected):
        await run_handshake(server, Identity.generate(), initiator=False)
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await client.get_message()
    assert closed.value.reason.code == CloseCode.NETWORK


async def test_messages_keep_their_order_whether_queued_or_sent_directly(nursery):
    _, _, alice_link, bob_link, _, _ = await linked_pair(nursery)
    nursery.start_soon(alice_link.run_writer)
    sent = []
    for i in range(200):
        message = Rumors((str(i).encode(),))
        if i % 3 == 0:
            if not alice_link.send_nowait(message):  # gossip: through the outbox, dropped when it is full
                continue
        else:
            await alice_link.send_ordered(message)  # jobs: directly when nothing waits before them
        sent.append(message)
        if i % 7 == 0:
            await trio.sleep(0)
    received = [await bob_link.receive(WireLimits()) for _ in sent]
    assert received == sent
