"""`servomesh flash` without a board: image checks before any port is opened, esptool's calls
per chip, the one-line errors (missing, busy and silent ports, another chip), and RP2040 UF2
copies to a fake BOOTSEL drive."""

import argparse
import io
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import esptool.cmds  # type: ignore[import-untyped]
import pytest
import serial
from esptool.targets import CHIP_DEFS  # type: ignore[import-untyped]
from esptool.util import FatalError  # type: ignore[import-untyped]

from servomesh.host import flash

NO_BOOTLOADER_BOUND_S = 5.0  # one connection attempt takes about 1 s on a silent pty


def esp_image(chip: str = "esp32", size: int = 8192, flash_code: int = 2) -> bytes:
    """A well-formed ESP image header for `chip` (flash size 1MB << flash_code), then 0xFF."""
    image = bytearray(b"\xff" * size)
    image[:8] = bytes([flash.ESP_IMAGE_MAGIC, 3, 2, flash_code << 4]) + b"\x00\x00\x08\x40"
    image[8:24] = bytes(16)  # extended header: drive strengths, chip id, revisions, no digest
    struct.pack_into("<H", image, 12, flash.ESP_CHIPS[chip].image_chip_id)
    return bytes(image)


def uf2_image(blocks: int = 4, family: int = flash.RP2040_FAMILY_ID, base: int = 0) -> bytes:
    out = bytearray()
    for index in range(blocks):
        address = flash.RP2040_FLASH_START + base + index * 256
        head = struct.pack(
            "<8I",
            flash.UF2_MAGIC_START0,
            flash.UF2_MAGIC_START1,
            flash.UF2_FLAG_FAMILY_ID,
            address,
            256,
            index,
            blocks,
            family,
        )
        payload = bytes([index % 256]) * 256
        block = head + payload + bytes(476 - 256) + struct.pack("<I", flash.UF2_MAGIC_END)
        assert len(block) == flash.UF2_BLOCK_BYTES
        out += block
    return bytes(out)


def options(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    flash.add_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(["flash", *args])


@pytest.fixture
def pty() -> Iterator[str]:
    """A serial port path with nothing behind it."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


@pytest.fixture
def no_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything opens a serial port or asks esptool to."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a port was opened: %r %r" % (args, kwargs))

    monkeypatch.setattr(serial, "Serial", forbidden)
    monkeypatch.setattr(serial, "serial_for_url", forbidden)
    monkeypatch.setattr(esptool.cmds, "detect_chip", forbidden)
    monkeypatch.setattr(esptool.cmds, "connect_esp", forbidden)


class FakeEsp:
    """What flash_esp uses of esptool's loader object, recording calls."""

    def __init__(self, chip_name: str, calls: list[tuple[Any, ...]]) -> None:
        self.CHIP_NAME = chip_name
        self.calls = calls

    def __enter__(self) -> "FakeEsp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append(("close",))

    def change_baud(self, baud: int) -> None:
        self.calls.append(("change_baud", baud))


@pytest.fixture
def fake_esptool(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """esptool's public API replaced by recorders; `state["chip"]` is what detection finds."""
    state: dict[str, Any] = {"calls": [], "chip": "ESP32", "write_error": None}
    calls: list[tuple[Any, ...]] = state["calls"]

    def detect_chip(**kwargs: Any) -> FakeEsp:
        calls.append(("detect_chip", kwargs))
        return FakeEsp(state["chip"], calls)

    def run_stub(esp: FakeEsp) -> FakeEsp:
        calls.append(("run_stub",))
        return esp

    def write_flash(esp: FakeEsp, addr_data: list[tuple[int, bytes]], **kwargs: Any) -> None:
        calls.append(("write_flash", addr_data, kwargs))
        if state["write_error"] is not None:
            raise state["write_error"]

    monkeypatch.setattr(esptool.cmds, "detect_chip", detect_chip)
    monkeypatch.setattr(esptool.cmds, "run_stub", run_stub)
    monkeypatch.setattr(esptool.cmds, "attach_flash", lambda esp: calls.append(("attach_flash",)))
    monkeypatch.setattr(esptool.cmds, "erase_flash", lambda esp: calls.append(("erase_flash",)))
    monkeypatch.setattr(esptool.cmds, "write_flash", write_flash)
    monkeypatch.setattr(
        esptool.cmds, "reset_chip", lambda esp, mode: calls.append(("reset_chip", mode))
    )
    return state


# -- images are checked before any port is opened --------------------------------------------------


@pytest.mark.parametrize(
    ("chip", "content", "message"),
    [
        ("esp32", None, "No such file"),
        ("esp32", b"", "not an ESP firmware image"),
        ("esp32", b"\x7fELF" + bytes(60), "not an ESP firmware image"),
        ("esp32", uf2_image(), "a .uf2 is for --chip rp2040"),
        ("esp32", esp_image("esp32s3"), "an image for esp32s3, not esp32"),
        ("esp32c3", esp_image("esp32c6"), "pass --chip esp32c6"),
        ("esp32", esp_image()[:12] + b"\x10\x00" + esp_image()[14:], "chip id 16"),
        ("esp32", esp_image(flash_code=3), "built for 8MB of flash, the board has 4MB"),
        ("esp32", esp_image(size=4 << 20), "do not fit 4MB of flash"),
        ("esp32", esp_image()[:23] + b"\x07" + esp_image()[24:], "malformed"),
        ("rp2040", esp_image(), "not a UF2 file"),
        ("rp2040", uf2_image()[:-1], "not a UF2 file"),
        ("rp2040", uf2_image(family=0xE48BFF59), "built for another chip"),
        ("rp2040", uf2_image()[512:], "the UF2 says 4 blocks, the file holds 3"),
        ("rp2040", uf2_image(base=(2 << 20) - 512), "writes outside 2MB of flash"),
    ],
)
def test_a_bad_image_is_refused_before_any_port_is_opened(
    no_port: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    chip: str,
    content: bytes | None,
    message: str,
) -> None:
    firmware = tmp_path / "firmware.bin"
    if content is not None:
        firmware.write_bytes(content)
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nBoard-ID: RPI-RP2\n")
    extra = ["--drive", str(drive)] if chip == "rp2040" else ["--port", "/dev/ttyUSB0"]
    status = flash.run(options("--chip", chip, "--firmware", str(firmware), *extra))
    error = capsys.readouterr().err
    assert status == 2
    assert message in error
    assert error.count("\n") == 1, error  # one line
    assert sorted(p.name for p in drive.iterdir()) == ["INFO_UF2.TXT"]  # nothing copied


def test_the_flash_size_option_bounds_the_image(no_port: None, tmp_path: Path) -> None:
    firmware = tmp_path / "big.bin"
    firmware.write_bytes(esp_image("esp32s3", size=5 << 20, flash_code=3))
    with pytest.raises(flash.ImageError, match="do not fit 4MB"):
        flash.flash("esp32s3", firmware, "/dev/ttyUSB0", flash_size="4MB")
    (tmp_path / "small.bin").write_bytes(esp_image("esp32s3", flash_code=3))
    with pytest.raises(flash.ImageError, match="built for 8MB of flash, the board has 4MB"):
        flash.flash("esp32s3", tmp_path / "small.bin", "/dev/ttyUSB0", flash_size="4MB")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chip", "esp32"], "--port is required for esp32"),
        (["--chip", "esp32", "--port", "/dev/ttyUSB0", "--drive", "/mnt/x"], "only for rp2040"),
        (["--chip", "esp32", "--port", "/dev/ttyUSB0", "--connect-attempts", "0"], "1 to 20"),
    ],
)
def test_usage_errors_touch_nothing(
    no_port: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    firmware = tmp_path / "firmware.bin"
    firmware.write_bytes(esp_image())
    assert flash.run(options(*args, "--firmware", str(firmware))) == 2
    assert message in capsys.readouterr().err


# -- esptool: what it is asked, per chip -----------------------------------------------------------


@pytest.mark.parametrize("chip", sorted(flash.ESP_CHIPS))
def test_the_chip_table_agrees_with_esptool(chip: str) -> None:
    entry, esptool_chip = flash.ESP_CHIPS[chip], CHIP_DEFS[chip]
    assert entry.offset == esptool_chip.BOOTLOADER_FLASH_OFFSET
    assert entry.image_chip_id == esptool_chip.IMAGE_CHIP_ID
    assert entry.esptool_name == esptool_chip.CHIP_NAME
    assert entry.flash_size in esptool_chip.FLASH_SIZES


EXPECTED_OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0, "esp32c3": 0, "esp32c6": 0}


@pytest.mark.parametrize("chip", sorted(flash.ESP_CHIPS))
def test_esptool_is_asked_to_erase_write_verify_and_reset_per_chip(
    fake_esptool: dict[str, Any], pty: str, tmp_path: Path, chip: str
) -> None:
    fake_esptool["chip"] = flash.ESP_CHIPS[chip].esptool_name
    image = esp_image(chip)
    firmware = tmp_path / ("%s.bin" % chip)
    firmware.write_bytes(image)
    summary = flash.flash(chip, firmware, pty, bar=flash.ProgressBar(io.StringIO()))
    assert fake_esptool["calls"] == [
        ("detect_chip", {"port": pty, "baud": 115200, "connect_attempts": 4}),
        ("run_stub",),
        ("change_baud", 460800),
        ("attach_flash",),
        ("erase_flash",),
        # write_flash checks the flash's MD5 against the image: the verification
        ("write_flash", [(EXPECTED_OFFSETS[chip], image)], {"flash_size": "keep"}),
        ("reset_chip", "hard-reset"),
        ("close",),
    ]
    assert "at 0x%x" % EXPECTED_OFFSETS[chip] in summary
    assert "verified" in summary


def test_options_change_baud_erase_flash_size_and_attempts(
    fake_esptool: dict[str, Any], pty: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_esptool["chip"] = "ESP32-S3"
    image = esp_image("esp32s3", flash_code=4)
    firmware = tmp_path / "s3.bin"
    firmware.write_bytes(image)
    args = ["--chip", "esp32s3", "--firmware", str(firmware), "--port", pty, "--no-erase"]
    args += ["--baud", "115200", "--flash-size", "16MB", "--connect-attempts", "2"]
    assert flash.run(options(*args)) == 0
    calls = fake_esptool["calls"]
    assert calls[0] == ("detect_chip", {"port": pty, "baud": 115200, "connect_attempts": 2})
    names = [call[0] for call in calls]
    assert "change_baud" not in names  # already at the ROM's rate
    assert "erase_flash" not in names
    assert ("write_flash", [(0, image)], {"flash_size": "16MB"}) in calls
    assert capsys.readouterr().out.startswith("flashed %s" % firmware)


def test_another_chip_on_the_port_is_named(
    fake_esptool: dict[str, Any], pty: str, tmp_path: Path
) -> None:
    fake_esptool["chip"] = "ESP32-S3"
    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image("esp32"))
    with pytest.raises(flash.ChipMismatchError, match="is an ESP32-S3, not an ESP32") as error:
        flash.flash("esp32", firmware, pty)
    assert "--chip esp32s3" in str(error.value)
    assert [call[0] for call in fake_esptool["calls"]] == ["detect_chip", "close"]  # no write


def test_a_failed_verification_is_one_clear_line(
    fake_esptool: dict[str, Any], pty: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_esptool["write_error"] = FatalError("MD5 of file does not match data in flash!")
    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image())
    assert flash.run(options("--chip", "esp32", "--firmware", str(firmware), "--port", pty)) == 1
    error = capsys.readouterr().err.splitlines()
    assert error[0] == "servomesh flash: erasing the whole flash (up to a minute)"
    assert "writing failed: verification failed" in error[1]
    assert len(error) == 2
    assert fake_esptool["calls"][-1] == ("close",)  # the port is closed, no reset


def test_a_missed_reset_after_a_verified_write_is_no_failure(
    fake_esptool: dict[str, Any], pty: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reset_chip(esp: FakeEsp, mode: str) -> None:
        raise FatalError("Hard reset failed")

    monkeypatch.setattr(esptool.cmds, "reset_chip", reset_chip)
    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image())
    summary = flash.flash("esp32", firmware, pty, erase=False)
    assert summary.endswith("verified; press RESET (EN) to start it")


# -- ports -----------------------------------------------------------------------------------------


def test_a_silent_port_says_hold_boot_within_a_bound(pty: str, tmp_path: Path) -> None:
    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image())
    started = time.monotonic()
    with pytest.raises(flash.NoBootloaderError) as error:
        flash.flash("esp32", firmware, pty, connect_attempts=1)
    elapsed = time.monotonic() - started
    assert elapsed < NO_BOOTLOADER_BOUND_S
    assert "no ESP bootloader answered in 1 connection attempt" in str(error.value)
    assert "hold BOOT, tap RESET (EN), release BOOT, and retry" in str(error.value)
    assert "\n" not in str(error.value)
    assert error.value.exit_status == 1


def test_a_busy_port_is_named_busy(fake_esptool: dict[str, Any], pty: str, tmp_path: Path) -> None:
    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image())
    holder = serial.Serial(pty, exclusive=True)  # another program's lock
    try:
        with pytest.raises(flash.PortError, match="busy: another program has it open"):
            flash.flash("esp32", firmware, pty)
    finally:
        holder.close()
    assert fake_esptool["calls"] == []  # esptool never asked


def test_a_missing_port_is_named_missing(no_port: None, tmp_path: Path) -> None:
    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image())
    with pytest.raises(flash.PortError, match="no such port: is the board plugged in"):
        flash.flash("esp32", firmware, str(tmp_path / "ttyUSB9"))


def test_a_file_that_is_no_serial_port_is_named(
    fake_esptool: dict[str, Any], tmp_path: Path
) -> None:
    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image())
    with pytest.raises(flash.PortError, match="cannot open it as a serial port"):
        flash.flash("esp32", firmware, str(firmware))
    assert fake_esptool["calls"] == []


# -- RP2040 ----------------------------------------------------------------------------------------


def make_drive(folder: Path, board_id: str = "RPI-RP2") -> Path:
    folder.mkdir(parents=True)
    (folder / "INFO_UF2.TXT").write_text(
        "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: %s\n" % board_id
    )
    return folder


def test_a_uf2_is_copied_to_the_mounted_drive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_drive(tmp_path / "media" / "me" / "STICK", board_id="NOT-A-PICO")
    drive = make_drive(tmp_path / "media" / "me" / "RPI-RP2")
    monkeypatch.setattr(flash, "DRIVE_PATTERNS", (str(tmp_path / "media" / "*" / "*"),))
    image = uf2_image(blocks=300)  # more than one copy chunk
    firmware = tmp_path / "RPI_PICO-v1.24.uf2"
    firmware.write_bytes(image)
    assert flash.run(options("--chip", "rp2040", "--firmware", str(firmware))) == 0
    assert (drive / firmware.name).read_bytes() == image
    captured = capsys.readouterr()
    assert "copied RPI_PICO-v1.24.uf2 (153600 bytes) to %s" % drive in captured.out
    assert "copying to RPI-RP2 100%" in captured.err


def test_without_a_drive_the_user_is_told_about_bootsel(
    no_port: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flash, "DRIVE_PATTERNS", (str(tmp_path / "*"),))
    firmware = tmp_path / "pico.uf2"
    firmware.write_bytes(uf2_image())
    with pytest.raises(flash.DriveNotFoundError, match="no RPI-RP2 drive is mounted: hold BOOTSEL"):
        flash.flash("rp2040", firmware)
    with pytest.raises(flash.DriveNotFoundError, match="not an RP2040 in BOOTSEL mode"):
        flash.flash("rp2040", firmware, drive=tmp_path)
    make_drive(tmp_path / "a")
    make_drive(tmp_path / "b")
    with pytest.raises(flash.DriveNotFoundError, match="2 RPI-RP2 drives are mounted"):
        flash.flash("rp2040", firmware)


def test_the_drive_vanishing_after_the_last_byte_is_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = make_drive(tmp_path / "RPI-RP2")
    firmware = tmp_path / "pico.uf2"
    firmware.write_bytes(uf2_image())

    def board_restarted(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", board_restarted)
    summary = flash.flash("rp2040", firmware, drive=drive, bar=flash.ProgressBar(io.StringIO()))
    assert summary.startswith("copied pico.uf2")


# -- the progress bar ------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_on_a_terminal_and_logs_tenths_elsewhere() -> None:
    log = io.StringIO()
    bar = flash.ProgressBar(log)
    for done in range(0, 1001, 50):
        bar.update(done, 1000, "Writing")
    assert log.getvalue().splitlines() == ["Writing %3d%%" % p for p in range(0, 101, 10)]
    terminal = Terminal()
    bar = flash.ProgressBar(terminal)
    bar.update(500, 1000, "Writing at 0x00001000")
    bar.update(1000, 1000, "Writing at 0x00002000")
    first, second = terminal.getvalue().split("\r")[1:]
    assert first == "Writing at 0x00001000    [" + "#" * 15 + "-" * 15 + "]  50%"
    assert second == "Writing at 0x00002000    [" + "#" * 30 + "] 100%\n"
