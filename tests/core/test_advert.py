"""Reading mDNS advertisements: what a browser accepts, and the URLs it dials."""

from __future__ import annotations

import pytest

from p2pnode.core.advert import SERVICE_TYPE, Advertisement, advert_properties, instance_name, read_advertisement
from p2pnode.core.identity import Identity
from p2pnode.errors import DecodeError

PEER = Identity.from_seed(bytes(range(32))).peer_id


def test_properties_round_trip_and_never_carry_a_key():
    props = advert_properties(PEER, 1, "0123456789abcdef", 11436, "box")
    assert props == {"id": PEER, "v": "1", "net": "0123456789abcdef", "port": "11436", "name": "box"}
    advert = read_advertisement(props, ["192.168.1.5"])
    assert advert == Advertisement(PEER, 1, "0123456789abcdef", 11436, ("192.168.1.5",))


def test_instance_names_come_from_the_peer_id_so_equal_names_never_collide():
    other = Identity.generate().peer_id
    assert instance_name(PEER) != instance_name(other)
    assert instance_name(PEER).endswith("." + SERVICE_TYPE) and len(instance_name(PEER).split(".")[0]) <= 63


def test_urls_prefer_ipv4_then_global_ipv6_then_link_local():
    advert = Advertisement(PEER, 1, "open", 7, ("fe80::1", "2001:db8::5", "10.0.0.2"))
    assert advert.urls() == ("ws://10.0.0.2:7", "ws://[2001:db8::5]:7", "ws://[fe80::1]:7")


@pytest.mark.parametrize(
    ("changes", "addresses", "message"),
    [
        ({"id": None}, ["10.0.0.1"], "without a peer id"),
        ({"id": "not-a-peer-id"}, ["10.0.0.1"], "base58"),
        ({"port": "http"}, ["10.0.0.1"], "not a number"),
        ({"port": "70000"}, ["10.0.0.1"], "out of range"),
        ({"v": None}, ["10.0.0.1"], "not a number"),
        ({"net": ""}, ["10.0.0.1"], "network fingerprint"),
        ({}, ["not-an-ip"], "usable address"),
        ({}, [], "usable address"),
    ],
)
def test_malformed_advertisements_are_refused(changes, addresses, message):
    props = {**advert_properties(PEER, 1, "open", 11436, "box"), **changes}
    with pytest.raises(DecodeError, match=message):
        read_advertisement(props, addresses)
