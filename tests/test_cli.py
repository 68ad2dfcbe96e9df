"""Flags, environment and config file merge in that order; bad input gets one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2pnode.cli import _parser, build_config
from p2pnode.cli_views import format_peers, format_status


def config_for(argv: list[str], environ: dict[str, str] | None = None):
    return build_config(_parser().parse_args(["run", *argv]), environ or {})


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path):
    toml = tmp_path / "dcn.toml"
    toml.write_text(
        'name = "from-file"\nuser = "file-user"\nlisten = "127.0.0.1:9000"\nseeds = ["ws://10.0.0.1:11436"]\n'
        "[gossip]\ninterval = 0.5\n[membership]\nsuspicion_timeout = 4\n"
    )
    config, _ = config_for(["--config", str(toml), "--name", "from-flag"], {"DCN_USER": "env-user", "DCN_NAME": "env"})
    assert config.name == "from-flag"
    assert config.user == "env-user"
    assert (config.overlay.listen_host, config.overlay.listen_port) == ("127.0.0.1", 9000)
    assert config.overlay.seeds == ("ws://10.0.0.1:11436",)
    assert config.overlay.gossip.interval == 0.5
    assert config.overlay.membership.suspicion_timeout == 4.0
    assert (config.http_host, config.http_port) == ("127.0.0.1", 11435)  # default
    assert config.mdns is True


def test_environment_lists_and_switches(tmp_path):
    config, _ = config_for([], {"DCN_SEEDS": "ws://a:1, ws://b:2", "DCN_MDNS": "false", "DCN_BACKENDS": "none"})
    assert config.overlay.seeds == ("ws://a:1", "ws://b:2")
    assert config.mdns is False and config.no_backend is True and config.backends == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nonsense"], "--listen must be HOST:PORT"),
        (["--http", "127.0.0.1:99999"], "--http must be HOST:PORT"),
        (["--seed", "http://x:1"], "peer address must look like ws://HOST:PORT"),
        (["--backend", "vllm=http://x"], "backend must be none"),
        (["--backend", "ollama=localhost"], "needs an http(s) URL"),
        (["--log-level", "loud"], "log level"),
    ],
)
def test_bad_flags_exit_2_with_one_clear_line(argv, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "p2pnode", "run", "--data-dir", str(tmp_path), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("dcn-node: error:")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name = [", "not valid TOML"),
        ("colour = 'blue'", "unknown key 'colour'"),
        ("[gossip]\nfanout = 'three'", "fanout must be a int"),
        ("[gossip]\nspeed = 1", "has no setting 'speed'"),
        ("[peers]\nmax_peers = -1", "must be positive"),
        ("seeds = 5", "seeds must be a list"),
    ],
)
def test_bad_config_files_are_named_precisely(content, message, tmp_path):
    from p2pnode.errors import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        config_for(["--config", str(path)])


def test_a_network_key_must_be_32_bytes(tmp_path):
    from p2pnode.errors import ConfigError

    key = tmp_path / "net.key"
    key.write_bytes(b"short")
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        config_for(["--network-key", str(key)])
    key.write_bytes(bytes(range(32)))
    fingerprint = config_for(["--network-key", str(key)])[0].overlay.network
    assert len(fingerprint) == 16 and bytes(range(32)).hex()[:16] not in fingerprint


def test_status_and_peers_tables_are_readable():
    status = format_status(
        {
            "total_nodes": 3,
            "online_nodes": 2,
            "total_gpu_memory": 8000,
            "total_cpu_cores": 12,
            "active_tasks": 1,
            "total_gpus": 1,
            "available_models": ["qwen2.5:7b"],
        }
    )
    assert "nodes online  2 of 3" in status and "qwen2.5:7b" in status
    node = {
        "node_id": "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq",
        "name": "box",
        "user_id": "ann",
        "status": "online",
        "available_models": ["a", "b", "c"],
        "gpu_count": 1,
        "gpu_memory": 8000,
        "cpu_cores": 8,
        "current_load": 0.25,
        "active_tasks": 1,
        "response_time": 95.4,
        "last_seen": 1000.0,
        "self": True,
    }
    table = format_peers([node], now=1005.0).splitlines()
    assert table[0].split() == [
        "NAME",
        "NODE",
        "STATUS",
        "USER",
        "MODELS",
        "GPUS",
        "GPU",
        "MB",
        "CPUS",
        "LOAD",
        "TASKS",
        "RT",
        "MS",
        "SEEN",
    ]
    assert table[1].split() == [
        "box",
        "*",
        "Btg3aaRM",
        "online",
        "ann",
        "a",
        "+2",
        "1",
        "8000",
        "8",
        "0.25",
        "1",
        "95",
        "5s",
        "ago",
    ]


def test_status_without_a_running_node_says_what_to_do(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "p2pnode", "status", "--http", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "Is `dcn-node run` running?" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "message"), [("--listen", "cannot listen for peers"), ("--http", "cannot serve the gateway")]
)
def test_a_port_in_use_is_named_with_the_flag_that_changes_it(flag, message, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--http" if flag == "--listen" else "--listen"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "p2pnode",
                "run",
                "--data-dir",
                str(tmp_path),
                "--no-mdns",
                "--backend",
                "none",
                flag,
                f"127.0.0.1:{port}",
                other,
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dcn-node: error:") and message in last and f"choose another address with {flag}" in last


# dcn-node keys: the network key and the users' API keys.


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``dcn-node ARGV`` in-process; returns (exit code, stdout, stderr). Leaves the root logger as it was."""
    import logging

    from p2pnode.cli import main

    for var in ("DCN_DATA_DIR", "DCN_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            with pytest.raises(SystemExit) as exit_info:
                main(list(argv))
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


def assert_one_line_error(code: int, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dcn-node: error:") and message in lines[0], err


def test_keys_new_network_writes_a_private_key_and_says_how_to_use_it(cli, tmp_path):
    from p2pnode import keystore

    path = tmp_path / "net.key"
    code, out, _ = cli("keys", "new-network", str(path))
    assert code == 0
    key = path.read_bytes()
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert str(path) in out and keystore.network_fingerprint(key) in out
    assert f"dcn-node run --network-key {path}" in out and "securely" in out
    # The node accepts it, and advertises the same fingerprint.
    assert config_for(["--network-key", str(path)])[0].overlay.network == keystore.network_fingerprint(key)

    code, _, err = cli("keys", "new-network", str(path))
    assert_one_line_error(code, err, "already exists")
    assert path.read_bytes() == key


def test_keys_add_user_prints_the_key_once_as_the_last_word(cli, tmp_path):
    from p2pnode.users import UserKeys

    code, out, _ = cli("keys", "add-user", "ann", "--data-dir", str(tmp_path))
    assert code == 0
    key = out.split()[-1]
    assert key.startswith("dcn_") and out.endswith(f"Authorization: Bearer {key}\n")
    assert "shown only" in out
    assert UserKeys.load(tmp_path).authenticate(key) == "ann"
    assert key not in (tmp_path / "users.json").read_text()

    code, _, err = cli("keys", "add-user", "ann", "--data-dir", str(tmp_path))
    assert_one_line_error(code, err, "user 'ann' already exists")
    code, _, err = cli("keys", "add-user", "not ok", "--data-dir", str(tmp_path))
    assert_one_line_error(code, err, "invalid user name")


def test_keys_list_and_remove_users(cli, tmp_path):
    from p2pnode.users import UserKeys

    code, out, err = cli("keys", "list-users", "--data-dir", str(tmp_path))
    assert (code, out) == (0, "") and "dcn-node keys add-user NAME" in err
    ann = cli("keys", "add-user", "ann", "--data-dir", str(tmp_path))[1].split()[-1]
    cli("keys", "add-user", "bob", "--data-dir", str(tmp_path))
    code, out, _ = cli("keys", "list-users", "--data-dir", str(tmp_path))
    rows = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and rows == ["NAME", "ann", "bob"] and ann not in out

    code, out, _ = cli("keys", "remove-user", "ann", "--data-dir", str(tmp_path))
    assert code == 0 and "removed user ann" in out
    assert UserKeys.load(tmp_path).authenticate(ann) is None
    assert [line.split()[0] for line in cli("keys", "list-users", "--data-dir", str(tmp_path))[1].splitlines()] == [
        "NAME",
        "bob",
    ]
    code, _, err = cli("keys", "remove-user", "ann", "--data-dir", str(tmp_path))
    assert_one_line_error(code, err, "no user named 'ann'")


def test_keys_commands_report_a_corrupt_users_file_in_one_line(cli, tmp_path):
    (tmp_path / "users.json").write_text("{oops")
    for argv in (["list-users"], ["add-user", "ann"], ["remove-user", "ann"]):
        code, _, err = cli("keys", *argv, "--data-dir", str(tmp_path))
        assert_one_line_error(code, err, "is corrupt")


@pytest.mark.parametrize("source", ["flag", "DCN_DATA_DIR", "DCN_CONFIG", "default"])
def test_keys_commands_use_the_data_dir_run_would_use(cli, tmp_path, monkeypatch, source):
    import platformdirs

    from p2pnode.users import UserKeys

    data_dir = tmp_path / "node"
    argv, environ = [], {}
    if source == "flag":
        argv = ["--data-dir", str(data_dir)]
    elif source == "DCN_DATA_DIR":
        environ = {"DCN_DATA_DIR": str(data_dir)}
    elif source == "DCN_CONFIG":
        toml = tmp_path / "dcn.toml"
        toml.write_text(f'data_dir = "{data_dir}"\n')
        environ = {"DCN_CONFIG": str(toml)}
    else:
        monkeypatch.setattr(platformdirs, "user_data_dir", lambda app: str(data_dir))
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    assert config_for(argv, environ)[0].data_dir == data_dir
    key = cli("keys", "add-user", "ann", *argv)[1].split()[-1]
    assert UserKeys.load(data_dir).authenticate(key) == "ann"


def test_the_api_key_is_the_last_word_of_stdout_of_the_real_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "p2pnode", "keys", "add-user", "ann", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    from p2pnode.users import UserKeys

    assert UserKeys.load(tmp_path).authenticate(result.stdout.split()[-1]) == "ann"


@pytest.mark.slow
def test_a_gateway_beyond_loopback_without_api_keys_exits_2_and_says_what_to_do(tmp_path):
    command = [sys.executable, "-m", "p2pnode", "run", "--data-dir", str(tmp_path), "--no-mdns", "--backend", "none",
               "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "no API keys" in result.stderr and "dcn-node keys add-user NAME" in result.stderr


def test_zero_means_unlimited_where_the_setting_says_so(tmp_path):
    from p2pnode.errors import ConfigError

    config = tmp_path / "dcn.toml"
    config.write_text("[gateway]\nrate_per_minute = 0\nmax_concurrent = 0\n[jobs]\nremote_share = 0\n")
    node, _ = config_for(["--config", str(config)])
    assert (node.gateway.rate_per_minute, node.gateway.max_concurrent, node.jobs.remote_share) == (0.0, 0, 0.0)
    config.write_text("[gateway]\nburst = 0\n")
    with pytest.raises(ConfigError, match="burst must be positive"):
        config_for(["--config", str(config)])
