"""Users' API keys (p2pnode.users) and the network key file (p2pnode.keystore): stored as hashes, 0600, atomic."""

from __future__ import annotations

import json
import logging
import stat

import pytest

from p2pnode import keystore
from p2pnode.errors import ConfigError
from p2pnode.users import (
    KEY_PREFIX,
    USERS_FILE,
    UserKeys,
    add_user,
    hash_key,
    list_users,
    remove_user,
    users_stamp,
)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_added_users_authenticate_with_their_own_key_only(tmp_path):
    ann, bob = add_user(tmp_path, "ann"), add_user(tmp_path, "bob.smith-2")
    assert ann.startswith(KEY_PREFIX) and len(ann) >= len(KEY_PREFIX) + 43  # 256 random bits
    keys = UserKeys.load(tmp_path)
    assert keys.authenticate(ann) == "ann"
    assert keys.authenticate(bob) == "bob.smith-2"
    assert keys.names == ("ann", "bob.smith-2") and len(keys) == 2 and keys
    assert [user.name for user in list_users(tmp_path)] == ["ann", "bob.smith-2"]
    assert all(isinstance(user.created, (int, float)) for user in list_users(tmp_path))


@pytest.mark.parametrize("wrong", ["", "dcn_", "Bearer x", "x" * 10_000, "\udcff", "dcn_" + "A" * 43, None, b"dcn_abc"])
def test_a_wrong_key_authenticates_nobody(tmp_path, wrong):
    key = add_user(tmp_path, "ann")
    keys = UserKeys.load(tmp_path)
    assert keys.authenticate(wrong) is None
    assert keys.authenticate(key[:-1]) is None
    assert keys.authenticate(key + " ") is None


def test_only_the_hash_is_stored_in_a_private_file(tmp_path):
    key = add_user(tmp_path, "ann")
    path = tmp_path / USERS_FILE
    text = path.read_text()
    assert key not in text and key[len(KEY_PREFIX) :] not in text
    assert json.loads(text)["users"]["ann"]["sha256"] == hash_key(key)
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [USERS_FILE], "no temp file left behind"


def test_a_missing_file_means_no_users(tmp_path):
    keys = UserKeys.load(tmp_path / "never-created")
    assert not keys and keys.names == () and keys.authenticate("dcn_x") is None
    assert list_users(tmp_path) == []
    assert users_stamp(tmp_path) is None


def test_the_data_dir_is_created_private(tmp_path):
    data_dir = tmp_path / "a" / "b"
    add_user(data_dir, "ann")
    assert mode(data_dir) == 0o700 and mode(data_dir / USERS_FILE) == 0o600


def test_remove_user_revokes_the_key_and_keeps_the_others(tmp_path):
    ann, bob = add_user(tmp_path, "ann"), add_user(tmp_path, "bob")
    before = users_stamp(tmp_path)
    remove_user(tmp_path, "ann")
    assert users_stamp(tmp_path) != before, "a node polling the stamp sees the change"
    keys = UserKeys.load(tmp_path)
    assert keys.authenticate(ann) is None and keys.authenticate(bob) == "bob"
    with pytest.raises(ConfigError, match="no user named 'ann'.*list-users"):
        remove_user(tmp_path, "ann")


def test_a_duplicate_name_is_refused_and_the_first_key_keeps_working(tmp_path):
    key = add_user(tmp_path, "ann")
    with pytest.raises(ConfigError, match="user 'ann' already exists.*remove-user ann"):
        add_user(tmp_path, "ann")
    assert UserKeys.load(tmp_path).authenticate(key) == "ann"


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "ümlaut", "a/b", "semi;colon", "new\nline"])
def test_invalid_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="invalid user name"):
        add_user(tmp_path, name)
    assert not (tmp_path / USERS_FILE).exists()


@pytest.mark.parametrize("name", ["a", "x" * 64, "A.b_c-9", "..."])
def test_valid_names(tmp_path, name):
    key = add_user(tmp_path, name)
    assert UserKeys.load(tmp_path).authenticate(key) == name


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", 'no "users" object'),
        (b'{"users": []}', 'no "users" object'),
        (b'{"users": {"bad name": {"sha256": "' + b"0" * 64 + b'"}}}', "invalid user name"),
        (b'{"users": {"ann": {"sha256": "abc"}}}', "user 'ann' has no valid sha256"),
        (b'{"users": {"ann": "plain"}}', "user 'ann' has no valid sha256"),
    ],
)
def test_a_corrupt_file_is_one_clear_line_saying_what_to_do(tmp_path, content, reason):
    (tmp_path / USERS_FILE).write_bytes(content)
    for call in (UserKeys.load, list_users, lambda d: add_user(d, "bob"), lambda d: remove_user(d, "ann")):
        with pytest.raises(ConfigError) as info:
            call(tmp_path)
        message = str(info.value)
        assert "\n" not in message and reason in message and "is corrupt" in message
        assert "move it away and add the users again with `dcn-node keys add-user NAME`" in message
    assert (tmp_path / USERS_FILE).read_bytes() == content, "a corrupt file is never overwritten"


def test_an_unreadable_file_says_to_check_permissions(tmp_path):
    (tmp_path / USERS_FILE).mkdir()  # unreadable as a file even for root, unlike chmod 0
    with pytest.raises(ConfigError, match="cannot read .*check its owner and permissions"):
        UserKeys.load(tmp_path)


def test_a_users_file_readable_by_others_is_warned_about(tmp_path, caplog):
    add_user(tmp_path, "ann")
    (tmp_path / USERS_FILE).chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="p2pnode.users"):
        UserKeys.load(tmp_path)
    assert "readable by other users; run: chmod 600" in caplog.text


def test_user_keys_can_be_built_from_hashes_and_never_show_them():
    keys = UserKeys({"ann": hash_key("dcn_secret")})
    assert keys.authenticate("dcn_secret") == "ann"
    assert hash_key("dcn_secret") not in repr(keys) and "ann" in repr(keys)


# The network key file.


def test_a_new_network_key_is_32_private_random_bytes_and_loads_back(tmp_path):
    path = tmp_path / "net.key"
    key = keystore.write_network_key(path)
    assert len(key) == 32 and path.read_bytes() == key and mode(path) == 0o600
    assert keystore.load_network_key(path) == key
    assert keystore.write_network_key(tmp_path / "other.key") != key


def test_an_existing_network_key_is_never_overwritten(tmp_path):
    path = tmp_path / "net.key"
    key = keystore.write_network_key(path)
    with pytest.raises(ConfigError, match="already exists"):
        keystore.write_network_key(path)
    assert path.read_bytes() == key


def test_a_network_key_in_a_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot write network key"):
        keystore.write_network_key(tmp_path / "nowhere" / "net.key")
    with pytest.raises(ConfigError, match="cannot read network key"):
        keystore.load_network_key(tmp_path / "nowhere" / "net.key")


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_a_network_key_of_the_wrong_size_says_how_to_make_one(tmp_path, size):
    path = tmp_path / "net.key"
    path.write_bytes(b"k" * size)
    with pytest.raises(
        ConfigError, match=f"exactly 32 bytes, it holds {size}; create one with `dcn-node keys new-network"
    ):
        keystore.load_network_key(path)


def test_a_network_key_readable_by_others_is_warned_about(tmp_path, caplog):
    path = tmp_path / "net.key"
    keystore.write_network_key(path)
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="p2pnode.keystore"):
        keystore.load_network_key(path)
    assert f"network key {path} is readable by other users" in caplog.text


def test_the_network_fingerprint_is_unchanged_so_mdns_adverts_stay_the_same():
    assert keystore.network_fingerprint(None) == "open"
    assert keystore.network_fingerprint(bytes(range(32))) == "219dc6e09aac1aba"  # the value before the move
