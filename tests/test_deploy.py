"""`servomesh deploy` against simulated boards over their pty, through mpremote's own transport:
the files land in the flash folder as on a board, the board resets and its node answers."""

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from nodeclient import UdpClient

from servomesh.host import board_repl, codec, deploy, upy
from servomesh.host.sim import Simulator
from servomesh.host.sim_board import BoardState
from servomesh.protocol import messages, stream

START_S = 10.0
MARK = "0.1.0+deploy-test"  # the firmware version of the tree these tests deploy
KEY = bytes(range(100, 132))
WIFI_SECRET = "hunter2-but-longer"  # noqa: S105 (a test secret, to look for in the output)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(nodes=1, serial=1) as simulator:
        simulator.wait_all_running(START_S)
        yield simulator


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compile cache shared by the tests that do not time a first deploy."""
    return tmp_path_factory.mktemp("build")


@pytest.fixture
def packages(tmp_path: Path) -> dict[str, Path]:
    """The device packages, with the firmware's VERSION marked: INFO then tells which runs."""
    found = {}
    for name in upy.DEVICE_PACKAGES:
        found[name] = tmp_path / "src" / name
        shutil.copytree(upy.package_dir(name), found[name], ignore=shutil.ignore_patterns("__py*"))
    init = found["firmware"] / "__init__.py"
    text = init.read_text()
    assert 'VERSION = "0.1.0"' in text
    init.write_text(text.replace('VERSION = "0.1.0"', 'VERSION = "%s"' % MARK))
    return found


def port_of(sim: Simulator) -> str:
    url = sim.boards[0].serial_url
    assert url is not None
    return url.removeprefix("serial://")


def test_deploy_copies_compiled_files_resets_and_the_new_firmware_answers(
    sim: Simulator, packages: dict[str, Path], tmp_path: Path
) -> None:
    board = sim.boards[0]
    assert board.state is BoardState.RUNNING  # the node runs: deploy must break in
    old_channels = board.config["channels"]
    build = tmp_path / "build"  # a cold compile cache: this is a first deploy
    full = deploy.deploy(port_of(sim), node_id="arm-7", key=KEY, build_dir=build, packages=packages)

    assert (full.node_id, full.firmware, full.board, full.configured) == (
        "arm-7",
        MARK,
        "sim",
        True,
    )
    assert full.compiled
    assert (board.restarts, board.reset_cause, board.state) == (1, "soft", BoardState.RUNNING)
    lib = board.flash / "lib" / "servomesh"
    for name, source in packages.items():
        modules = sorted(p.relative_to(source) for p in source.rglob("*.py") if p.name != "main.py")
        on_flash = sorted(p.relative_to(lib / name) for p in (lib / name).rglob("*"))
        assert on_flash == [m.with_suffix(".mpy") for m in modules]
        for module in modules:
            mpy = module.with_suffix(".mpy")
            assert (lib / name / mpy).read_bytes() == (
                build / "x64-mpy6.3" / name / mpy
            ).read_bytes()
    assert (board.flash / "main.py").read_bytes() == (packages["firmware"] / "main.py").read_bytes()
    config = json.loads((board.flash / "servomesh.json").read_text())
    assert (config["node_id"], config["key"], config["channels"]) == (
        "arm-7",
        KEY.hex(),
        old_channels,
    )
    copied = {"main.py", "servomesh.json"} | {
        "lib/servomesh/%s/%s" % (p.parent.name, p.name) for p in lib.rglob("*.mpy")
    }
    assert set(full.copied) == copied
    compiled_bytes = sum(len((board.flash / path).read_bytes()) for path in copied)
    assert full.payload_bytes == compiled_bytes
    assert full.bytes_sent <= 1.1 * compiled_bytes  # the bound for a full deploy

    # The node answers with its new id and key, over UDP too.
    client = UdpClient(board.udp_port, KEY)
    try:
        info = client.request(messages.HELLO, messages.PROTOCOL_VERSION)[2]
    finally:
        client.close()
    assert (info["node_id"], info["firmware"], info["boot_id"]) == ("arm-7", MARK, full.boot_id)

    # Nothing changed: the node, asked, runs this build; nothing sent, no reset, 5x faster.
    again = deploy.deploy(port_of(sim), build_dir=build, packages=packages)
    assert (again.copied, again.deleted, again.unchanged) == ((), (), len(copied) - 1)
    assert (again.node_id, again.firmware, again.boot_id) == ("arm-7", MARK, full.boot_id)
    assert board.restarts == 1
    assert full.seconds >= 5 * again.seconds, (full.seconds, again.seconds)
    # The same with the options of the first deploy: they match what the node reports.
    same = deploy.deploy(port_of(sim), node_id="arm-7", key=KEY, build_dir=build, packages=packages)
    assert (same.copied, same.boot_id, board.restarts) == ((), full.boot_id, 1)

    # Another key, or a changed source, goes through: only what differs is sent.
    other_key = bytes(32)
    rekeyed = deploy.deploy(port_of(sim), key=other_key, build_dir=build, packages=packages)
    assert (rekeyed.copied, board.restarts) == (("servomesh.json",), 2)
    assert json.loads((board.flash / "servomesh.json").read_text())["key"] == other_key.hex()
    motion = packages["firmware"] / "motion.py"
    motion.write_text(motion.read_text() + "\nCHANGED = 1\n")
    changed = deploy.deploy(port_of(sim), build_dir=build, packages=packages)
    assert (changed.copied, changed.boot_id != rekeyed.boot_id) == (
        ("lib/servomesh/firmware/motion.mpy",),
        True,
    )

    # Hand edits on the board are found with --verify: a damaged file is sent again, a stale
    # one (a .py would shadow its .mpy) is deleted.
    (lib / "protocol" / "cbor.mpy").write_bytes(b"M\x06garbage")
    (lib / "protocol" / "stale.py").write_text("raise ImportError\n")
    fixed = deploy.deploy(port_of(sim), build_dir=build, packages=packages, verify=True)
    assert fixed.copied == ("lib/servomesh/protocol/cbor.mpy",)
    assert fixed.deleted == ("lib/servomesh/protocol/stale.py",)
    assert not (lib / "protocol" / "stale.py").exists()
    assert (lib / "protocol" / "cbor.mpy").read_bytes() == (
        build / "x64-mpy6.3" / "protocol" / "cbor.mpy"
    ).read_bytes()
    assert fixed.firmware == MARK


def test_secrets_given_to_deploy_never_appear_in_its_output_or_logs(
    sim: Simulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "node.key"
    key_file.write_text(KEY.hex() + "\n")
    pass_file = tmp_path / "wifi.pass"
    pass_file.write_text(WIFI_SECRET + "\n")
    parser = argparse.ArgumentParser()
    deploy.add_arguments(parser.add_subparsers(dest="command"))
    argv = ["deploy", "--port", sim.boards[0].serial_url or "", "--node-id", "secret-1"]
    argv += ["--key-file", str(key_file), "--wifi-ssid", "workshop"]
    argv += ["--wifi-pass-file", str(pass_file), "--sender-id", "9"]
    assert deploy.run(parser.parse_args(argv)) == 0

    out, err = capsys.readouterr()
    assert out.startswith("secret-1: firmware 0.1.0, board sim, boot id ")
    assert "resetting the board" in err
    assert "wifi workshop (password from the file)" in err
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (KEY.hex(), WIFI_SECRET, KEY.hex().upper()):
        assert secret not in out
        assert secret not in err
        assert secret not in logged
    config = json.loads((sim.boards[0].flash / "servomesh.json").read_text())
    assert config["key"] == KEY.hex()
    assert config["wifi"] == {"ssid": "workshop", "password": WIFI_SECRET}
    assert config["sender_id"] == 9


def test_a_board_whose_bytecode_differs_gets_py_sources(
    sim: Simulator,
    packages: dict[str, Path],
    build: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(deploy, "mpy_cross_version", lambda cache=None: (6, 2))
    result = deploy.deploy(port_of(sim), build_dir=build, packages=packages)
    assert not result.compiled
    assert result.firmware == MARK  # booted from the .py files
    assert any("copying .py sources" in record.getMessage() for record in caplog.records)
    lib = sim.boards[0].flash / "lib" / "servomesh"
    assert sorted(p.suffix for p in lib.rglob("*.*")) == [".py"] * len(list(lib.rglob("*.*")))
    source = (packages["protocol"] / "cbor.py").read_bytes()
    assert (lib / "protocol" / "cbor.py").read_bytes() == source
    # Back to .mpy: every .py is deleted, or it would shadow its .mpy.
    monkeypatch.undo()
    back = deploy.deploy(port_of(sim), build_dir=build, packages=packages)
    assert back.compiled
    assert sorted(back.deleted) == sorted(p.removesuffix(".mpy") + ".py" for p in back.copied)
    assert not list(lib.rglob("*.py"))


def test_a_node_that_cannot_boot_is_reported_with_its_last_words(
    sim: Simulator, packages: dict[str, Path], build: Path
) -> None:
    (packages["firmware"] / "main.py").write_text('raise RuntimeError("broken build")\n')
    with pytest.raises(deploy.DeployError, match=r"did not start: .*broken build"):
        deploy.deploy(port_of(sim), build_dir=build, packages=packages)
    sim.boards[0].wait_until(lambda b: b.state is BoardState.REPL, START_S)


def test_a_config_the_node_refuses_boots_it_unconfigured(sim: Simulator, build: Path) -> None:
    # The node validates its config: GPIO 1 is the esp32's serial link.
    result = deploy.deploy(port_of(sim), board="esp32", build_dir=build)
    assert (result.configured, result.node_id, result.board) == (False, None, None)
    assert "channels[1].pin: GPIO 1 is UART0" in (result.config_error or "")


def test_a_node_without_its_serial_link_is_deployed_up_to_its_boot_banner(build: Path) -> None:
    with Simulator(nodes=1, serial=1, configs=[{"serial": False}]) as off:
        off.wait_all_running(START_S)
        result = deploy.deploy(port_of(off), node_id="quiet-1", build_dir=build)
        assert (result.node_id, result.configured, result.firmware) == ("quiet-1", True, None)
        assert off.boards[0].restarts == 1
        client = UdpClient(off.boards[0].udp_port, off.boards[0].key)
        try:
            info = client.request(messages.HELLO, messages.PROTOCOL_VERSION)[2]
        finally:
            client.close()
        assert info["node_id"] == "quiet-1"


def test_a_missing_or_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(deploy.DeployError, match="no such port"):
        deploy.deploy(str(tmp_path / "ttyACM9"))
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        with serial.Serial(path, exclusive=True), pytest.raises(deploy.DeployError, match="busy"):
            deploy.deploy(path)
    finally:
        os.close(master)
        os.close(slave)


def test_a_port_without_micropython_gives_up_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(board_repl, "BREAK_IN_ATTEMPTS_S", (0.2, 0.3))
    master, slave = os.openpty()  # nobody answers on the other end
    started = time.monotonic()
    try:
        with pytest.raises(deploy.DeployError, match="no MicroPython raw REPL"):
            deploy.deploy(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)
    assert time.monotonic() - started < 0.5 + 1.0


def test_chunks_never_split_an_escape_pair_nor_take_length_three() -> None:
    data = bytes(range(256)) * 9 + b"\x03\xdb" * 300 + b"abc"
    escaped = data.replace(b"\xdb", b"\xdb\xfb").replace(b"\x03", b"\xdb\x23")
    chunks = list(board_repl._chunks(escaped))
    assert b"".join(chunks) == escaped
    assert all(1 <= len(c) <= board_repl.CHUNK_BYTES and len(c) != 3 for c in chunks)
    assert all(not c.endswith(b"\xdb") for c in chunks)
    decoded = b"".join(
        c.replace(b"\xdb\x23", b"\x03").replace(b"\xdb\xfb", b"\xdb") for c in chunks
    )
    assert decoded == data
    assert hashlib.sha256(decoded).digest() == hashlib.sha256(data).digest()
    assert b"\x03" not in escaped


def test_the_discover_probe_holds_no_byte_a_repl_acts_on() -> None:
    frame = stream.encode_frame(codec.encode(messages.DISCOVER, board_repl.DISCOVER_SEQ))
    acted_on = {0x01, 0x02, 0x03, 0x04, 0x05, 0x08, 0x09, 0x0A, 0x0D, 0x1B, 0x7F}
    assert not acted_on & set(frame)
