"""Several real overlays in one process, linked by real loopback websockets."""

from __future__ import annotations

import pytest
import trio

from p2pnode.core.identity import Identity
from p2pnode.core.membership import MemberState
from p2pnode.core.records import NodeRecord, NodeStatus, Notice, NoticeKind, next_seq, seal_notice, seal_record
from p2pnode.core.wire import Rumors
from p2pnode.net.transport import OPEN_NETWORK_KEY, HandshakeConfig, dial
from p2pnode.core.wire import WireLimits

from tests.net.helpers import Network, state_of, wait_all

pytestmark = pytest.mark.slow


def knows_all_alive(count: int):
    return lambda node: len(node.overlay.membership.alive()) == count - 1


async def test_mesh_of_five_forms_from_one_seed(nursery):
    net = Network(nursery)
    nodes = await net.start_mesh(5)
    await wait_all(nodes, knows_all_alive(5))
    for node in nodes:
        names = sorted(m.signed.record.name for m in node.overlay.membership)
        assert len(names) == 4 and node.overlay.local_record.record.name not in names
    # Records travel through peers that are not directly connected: node1 never dialled node4 itself.
    assert all(node.overlay.linked_peers for node in nodes)


async def test_killed_node_is_seen_offline_by_all(nursery):
    net = Network(nursery)
    nodes = await net.start_mesh(4)
    await wait_all(nodes, knows_all_alive(4))
    victim, survivors = nodes[-1], nodes[:-1]
    victim.kill()
    await wait_all(survivors, lambda n: state_of(n, victim.peer_id) is MemberState.OFFLINE)
    assert all(len(n.overlay.membership.alive()) == 2 for n in survivors)


async def test_leaving_node_is_marked_left_at_once(nursery):
    net = Network(nursery)
    nodes = await net.start_mesh(3)
    await wait_all(nodes, knows_all_alive(3))
    leaver = nodes[1]
    await leaver.overlay.leave()
    leaver.kill()
    others = [nodes[0], nodes[2]]
    await wait_all(others, lambda n: state_of(n, leaver.peer_id) is MemberState.LEFT)


async def test_restart_with_same_identity_is_online_again(nursery):
    net = Network(nursery)
    nodes = await net.start_mesh(3)
    await wait_all(nodes, knows_all_alive(3))
    victim = nodes[2]
    identity = victim.overlay.identity
    old_seq = victim.overlay.local_record.record.seq
    victim.kill()
    survivors = nodes[:2]
    await wait_all(survivors, lambda n: state_of(n, victim.peer_id) is MemberState.OFFLINE)
    reborn = await net.start("node2-again", seeds=(nodes[0].url,), identity=identity)
    assert reborn.peer_id == victim.peer_id
    await wait_all(survivors, lambda n: state_of(n, victim.peer_id) is MemberState.ALIVE)
    member = survivors[0].overlay.membership.get(victim.peer_id)
    assert member.seq > old_seq and member.signed.record.name == "node2-again"


async def test_suspicion_of_a_live_node_is_refuted_everywhere(nursery):
    net = Network(nursery)
    nodes = await net.start_mesh(3)
    await wait_all(nodes, knows_all_alive(3))
    target = nodes[2]
    seq = target.overlay.local_record.record.seq
    accuser = nodes[0].overlay
    notice = accuser.membership.observe_failure(
        target.peer_id, NoticeKind.SUSPECT, now=trio.current_time(), wall_now=trio_wall(), identity=accuser.identity
    )
    accuser.gossip.spread(notice)
    await wait_all([target], lambda n: n.overlay.local_record.record.seq > seq)
    await wait_all(nodes[:2], lambda n: state_of(n, target.peer_id) is MemberState.ALIVE)


async def test_full_seed_hands_out_its_table(nursery):
    net = Network(nursery)
    seed = await net.start("seed", peers=_peers(max_peers=2, target_peers=2))
    nodes = [seed]
    for i in range(5):
        nodes.append(await net.start(f"node{i}", seeds=(seed.url,), peers=_peers(max_peers=4, target_peers=2)))
    await wait_all(nodes, knows_all_alive(6))
    assert len(seed.overlay.linked_peers) <= 2


async def test_simultaneous_dials_leave_one_link(nursery):
    net = Network(nursery)
    a = await net.start("a")
    b = await net.start("b", seeds=(a.url,))
    c = await net.start("c", seeds=(a.url, b.url))
    await wait_all([a, b, c], knows_all_alive(3))
    for node in (a, b, c):
        links = node.overlay.linked_peers
        assert len(links) == len(set(links))
        assert len(links) <= 2


def _peers(**changes):
    import dataclasses

    from tests.net.helpers import FAST_PEERS

    return dataclasses.replace(FAST_PEERS, **changes)


def trio_wall() -> float:
    import time

    return time.time()


def _record(identity: Identity, *, seq: int, issued_at: float, **fields) -> NodeRecord:
    return NodeRecord(peer_id=identity.peer_id, seq=seq, issued_at=issued_at, lifetime=120.0, **fields)


async def test_hostile_statements_are_refused_and_the_node_keeps_serving(nursery):
    import time

    net = Network(nursery)
    honest = await net.start("honest")
    bystander_id = Identity.generate()
    attacker = Identity.generate()
    now = time.time()
    # A record the attacker signed, claiming to be the bystander: the signer is not the id.
    forged = bytearray(seal_record(attacker, _record(attacker, seq=next_seq(0, now), issued_at=now, name="x")).envelope)
    victim_record = seal_record(bystander_id, _record(bystander_id, seq=next_seq(0, now), issued_at=now, name="bystander"))
    tampered = bytearray(victim_record.envelope)
    tampered[-70] ^= 0x01  # inside the payload: the signature no longer matches
    expired = seal_record(bystander_id, _record(bystander_id, seq=5, issued_at=now - 1000, name="old"))
    future = seal_record(bystander_id, _record(bystander_id, seq=6, issued_at=now + 3600, name="future"))
    oversized = seal_record(bystander_id, _record(bystander_id, seq=7, issued_at=now, models=tuple(f"m{i}" for i in range(300))))
    # The honest node's record, replayed with its seq: stale.
    replay = honest.overlay.local_record.envelope
    config = HandshakeConfig(attacker, OPEN_NETWORK_KEY, 5.0, WireLimits())
    attacker_record = seal_record(attacker, _record(attacker, seq=next_seq(0, now), issued_at=now, name="attacker"))
    async with dial(honest.url, config, attacker_record, wall_now=time.time, outbox=16) as link:
        forged[30] ^= 0x01  # also break the signer field
        await link.send(Rumors((bytes(forged), bytes(tampered), expired.envelope, future.envelope, oversized.envelope, replay, b"\x00garbage")))
        # A genuine record still gets through on the same link.
        await link.send(Rumors((victim_record.envelope,)))
        with trio.fail_after(10):
            await honest.overlay.wait_until(lambda: honest.overlay.membership.get(bystander_id.peer_id) is not None)
    member = honest.overlay.membership.get(bystander_id.peer_id)
    assert member.signed.record.name == "bystander"
    assert honest.overlay.statistics().rejected_statements == 6
    # And the node still serves newcomers.
    newcomer = await net.start("newcomer", seeds=(honest.url,))
    await wait_all([honest, newcomer], lambda n: len(n.overlay.membership.alive()) >= 1)


async def test_a_flood_of_new_peer_ids_from_one_link_is_cut_off_and_others_still_join(nursery):
    import dataclasses
    import time

    from tests.net.helpers import FAST_GOSSIP

    net = Network(nursery)
    gossip = dataclasses.replace(FAST_GOSSIP, new_peers_per_minute=1.0, new_peers_burst=50)
    honest = await net.start("honest", gossip=gossip)
    attacker = Identity.generate()
    now = time.time()
    fakes = [Identity.generate() for _ in range(300)]
    flood = [seal_record(f, _record(f, seq=next_seq(0, now), issued_at=now, name="fake")).envelope for f in fakes]
    config = HandshakeConfig(attacker, OPEN_NETWORK_KEY, 5.0, WireLimits())
    attacker_record = seal_record(attacker, _record(attacker, seq=next_seq(0, now), issued_at=now, name="attacker"))
    async with dial(honest.url, config, attacker_record, wall_now=time.time, outbox=16) as link:
        for start in range(0, len(flood), 100):
            await link.send(Rumors(tuple(flood[start : start + 100])))
        with trio.fail_after(10):
            await honest.overlay.wait_until(lambda: honest.overlay.statistics().rejected_statements >= 240)
    fake_ids = {f.peer_id for f in fakes}
    admitted = [m for m in honest.overlay.membership if m.peer_id in fake_ids]
    assert 49 <= len(admitted) <= 52  # the burst (less the attacker's own record), and what refilled meanwhile
    # Another peer still joins, and introduces the peers it knows.
    newcomer = await net.start("newcomer", seeds=(honest.url,))
    await wait_all([honest, newcomer], lambda n: any(m.signed.record.name in ("honest", "newcomer")
                                                     for m in n.overlay.membership.alive()))


async def test_a_notice_about_us_is_refuted_not_forwarded(nursery):
    net = Network(nursery)
    a = await net.start("a")
    b = await net.start("b", seeds=(a.url,))
    await wait_all([a, b], knows_all_alive(2))
    seq = b.overlay.local_record.record.seq
    notice = seal_notice(a.overlay.identity, Notice(a.peer_id, NoticeKind.DEAD, b.peer_id, seq, trio_wall()))
    b.overlay.gossip.accept([notice.envelope], a.peer_id)
    assert b.overlay.local_record.record.seq > seq
    assert b.overlay.local_record.record.status is NodeStatus.ONLINE
