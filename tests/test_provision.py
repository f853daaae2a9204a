"""`servomesh provision`: key files (0600, 64 hex digits, never overwritten without --force),
the printed TOML lines (they load with the config), and a simulated board deployed with the
key: it answers requests signed with it and refuses unsigned ones."""

import argparse
import json
import re
import stat
import tomllib
from pathlib import Path

import pytest
from nodeclient import NoReplyError, UdpClient
from nodetest import channel, wait_ready

from servomesh.host import fleet_config, provision
from servomesh.host.fleet import FleetError, read_key
from servomesh.host.sim import Simulator
from servomesh.protocol import messages

CONFIG = """\
# a fleet without keys yet
[nodes.arm-base]
link = "udp://127.0.0.1:5683"
board = "esp32"

[nodes.head]
link = "udp://127.0.0.1:5684"

[nodes.wrist]
link = "serial:///dev/ttyACM0"
board = "rp2040"
key_file = "keys/wrist.key"
"""
HEX_KEY = re.compile(r"[0-9a-f]{64}\n")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "arm.toml"
    path.write_text(CONFIG)
    return path


def run(*args: str) -> int:
    parser = argparse.ArgumentParser()
    provision.add_arguments(parser.add_subparsers(dest="command"))
    return provision.run(parser.parse_args(["provision", *args]))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def with_lines(text: str, printed: str) -> str:
    """The config with each printed `key_file` line put under its node's table."""
    for name, table in tomllib.loads(printed)["nodes"].items():
        header = "[nodes.%s]\n" % name
        assert header in text
        text = text.replace(header, header + "key_file = %s\n" % json.dumps(table["key_file"]))
    return text


def test_each_node_gets_an_owner_only_key_file_and_no_key_is_shown(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--config", str(config)) == 0
    out, err = capsys.readouterr()
    keys = config.parent / "arm.keys"
    assert mode(keys) == 0o700
    files = sorted(keys.iterdir())
    assert [f.name for f in files] == ["arm-base.key", "head.key"]
    wrist = config.parent / "keys" / "wrist.key"  # named in the config, missing: written there
    for key_file in [*files, wrist]:
        assert mode(key_file) == 0o600
        text = key_file.read_text()
        assert HEX_KEY.fullmatch(text)
        assert text.strip() not in out + err
    assert len({f.read_text() for f in [*files, wrist]}) == 3
    assert "wrist" not in out  # the config names its file already
    assert "mode 0600" in err
    assert run("--config", str(config), "--node", "wrist") == 0
    assert "wrist already has its key file: left alone" in capsys.readouterr().err


def test_the_printed_lines_load_with_the_config(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--config", str(config)) == 0
    printed = capsys.readouterr().out
    assert tomllib.loads(printed) == {
        "nodes": {
            "arm-base": {"key_file": "arm.keys/arm-base.key"},
            "head": {"key_file": "arm.keys/head.key"},
        }
    }
    fleet = fleet_config.loads(with_lines(CONFIG, printed), base_dir=config.parent)
    for name in ("arm-base", "head"):
        key_file = fleet.nodes[name].key_file
        assert key_file == config.parent / "arm.keys" / (name + ".key")
        assert len(read_key(key_file)) == 32


def test_key_files_are_never_overwritten_without_force(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--config", str(config)) == 0
    keys = config.parent / "arm.keys"
    before = {f.name: f.read_text() for f in keys.iterdir()}
    (keys / "arm-base.key").unlink()  # only head's is in the way: nothing may be written
    capsys.readouterr()
    assert run("--config", str(config)) == 2
    err = capsys.readouterr().err
    assert "head.key exists and is not the key_file of head" in err
    assert "--force" in err
    assert sorted(f.name for f in keys.iterdir()) == ["head.key"]
    assert (keys / "head.key").read_text() == before["head.key"]
    assert run("--config", str(config), "--force", "--node", "head") == 0
    assert (keys / "head.key").read_text() != before["head.key"]
    assert mode(keys / "head.key") == 0o600
    assert "replaced the key in arm.keys/head.key" in capsys.readouterr().err
    assert [f.name for f in keys.iterdir() if f.name.startswith(".")] == []  # no temporary left


def test_force_replaces_a_configured_key_file_in_place(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = config.parent / "keys" / "wrist.key"
    old.parent.mkdir()
    old.write_text("00" * 32 + "\n")
    old.chmod(0o644)
    assert run("--config", str(config), "--node", "wrist") == 0  # skipped: it has its key file
    assert old.read_text() == "00" * 32 + "\n"
    assert mode(old) == 0o644
    assert run("--config", str(config), "--node", "wrist", "--force") == 0
    out, err = capsys.readouterr()
    assert out == ""  # the config names this file already
    assert "arm.toml already names these key files" in err
    assert HEX_KEY.fullmatch(old.read_text())
    assert old.read_text() != "00" * 32 + "\n"
    assert mode(old) == 0o600


def test_a_fleet_key_is_shared_and_kept_by_later_runs(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--config", str(config), "--per-fleet") == 0
    out = capsys.readouterr().out
    fleet_key = config.parent / "arm.keys" / "fleet.key"
    assert mode(fleet_key) == 0o600
    key = fleet_key.read_text()
    nodes = tomllib.loads(out)["nodes"]
    assert nodes == {name: {"key_file": "arm.keys/fleet.key"} for name in ("arm-base", "head")}
    # wrist's config names its own file: it gets the same key there
    assert (config.parent / "keys" / "wrist.key").read_text() == key
    assert run("--config", str(config), "--per-fleet", "--node", "head") == 0
    assert fleet_key.read_text() == key  # a new node joins the fleet key; it never changes
    assert "using the fleet key already in arm.keys/fleet.key" in capsys.readouterr().err


def test_keys_dir_outside_the_config_folder_is_named_absolutely(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path.parent / (tmp_path.name + "-keys")
    try:
        assert run("--config", str(config), "--node", "head", "--keys-dir", str(elsewhere)) == 0
        printed = tomllib.loads(capsys.readouterr().out)
        assert printed["nodes"]["head"]["key_file"] == str(elsewhere / "head.key")
    finally:
        for item in elsewhere.iterdir():
            item.unlink()
        elsewhere.rmdir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node", "elbow"], "no node elbow in"),
        (["--node", "head", "--node", "nope"], "no node nope in"),
    ],
)
def test_unknown_nodes_are_one_line(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run("--config", str(config), *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "its nodes: arm-base, head, wrist" in err
    assert not (config.parent / "arm.keys").exists()


def test_a_bad_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[nodes.x]\nlink = 5\n")
    assert run("--config", str(bad)) == 2
    assert "servomesh provision: %s" % bad in capsys.readouterr().err


def test_node_key_hex_reads_a_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "k.key"
    provision.write_key_file(key_file, bytes(range(32)))
    assert provision.node_key_hex(key_file) == bytes(range(32)).hex()
    key_file.write_text("not hex\n")
    with pytest.raises(FleetError, match="not hex digits"):
        provision.node_key_hex(key_file)
    with pytest.raises(FileExistsError):
        provision.write_key_file(key_file, bytes(32))


def test_a_node_deployed_with_the_key_takes_signed_requests_only(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--config", str(config), "--node", "head") == 0
    fleet = fleet_config.loads(with_lines(CONFIG, capsys.readouterr().out), base_dir=config.parent)
    host_key = read_key(fleet.nodes["head"].key_file)  # type: ignore[arg-type]
    node_config = {
        "node_id": "head",
        "key": provision.node_key_hex(config.parent / "arm.keys" / "head.key"),
        "channels": [channel(0), channel(1)],
    }
    with Simulator(nodes=1, configs=[node_config]) as sim:
        sim.wait_all_running(10)
        signed = UdpClient(sim.boards[0].udp_port, host_key)
        unsigned = UdpClient(sim.boards[0].udp_port, None, timeout_s=0.5)
        try:
            info = wait_ready(signed)
            assert info[0] == messages.INFO
            assert info[2]["node_id"] == "head"
            before = info[2]["counters"]["auth_failed"]
            with pytest.raises(NoReplyError):
                unsigned.request(messages.HELLO, messages.PROTOCOL_VERSION)
            after = signed.request(messages.HELLO, messages.PROTOCOL_VERSION)[2]["counters"]
            assert after["auth_failed"] == before + 1
        finally:
            signed.close()
            unsigned.close()
