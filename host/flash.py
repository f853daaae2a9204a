"""`servomesh flash`: put a MicroPython firmware image on a board.

ESP32 chips: over USB serial with esptool's Python API (erase, write at the chip's offset,
verify). RP2040: copy a `.uf2` to the board's RPI-RP2 drive. The image is checked before any
port is opened, and every failure is one line naming what to do. docs/boards.md has the
walkthrough.
"""

import argparse
import contextlib
import errno
import glob
import logging
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import serial

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chip:
    """An ESP32 chip servomesh flashes, and where MicroPython's image goes on it."""

    name: str  # esptool's chip argument
    esptool_name: str  # what esptool's detection reports (CHIP_NAME)
    image_chip_id: int  # the chip id of an image built for it (extended header, bytes 12-13)
    offset: int  # where the image starts in flash
    flash_size: str  # the flash of the board MicroPython's generic build is for


# MicroPython's ESP32 downloads are one image: second-stage bootloader, partition table and
# application. It goes where the ROM looks for the bootloader: 0x1000 on the ESP32 and ESP32-S2,
# 0 on the later chips (micropython.org/download gives the same offsets; they are esptool's
# BOOTLOADER_FLASH_OFFSET and IMAGE_CHIP_ID, which tests/test_flash.py checks). The generic
# ESP32-S3 build is for 8 MB of flash (its FLASH_4M variant for 4 MB); the others for 4 MB.
ESP_CHIPS: Final = {
    chip.name: chip
    for chip in (
        Chip("esp32", "ESP32", 0, 0x1000, "4MB"),
        Chip("esp32s2", "ESP32-S2", 2, 0x1000, "4MB"),
        Chip("esp32s3", "ESP32-S3", 9, 0x0, "8MB"),
        Chip("esp32c3", "ESP32-C3", 5, 0x0, "4MB"),
        Chip("esp32c6", "ESP32-C6", 13, 0x0, "4MB"),
    )
}
RP2040: Final = "rp2040"
RP2040_FLASH_SIZE: Final = "2MB"  # a Raspberry Pi Pico
CHIPS: Final = (*ESP_CHIPS, RP2040)
FLASH_SIZES: Final = {"%dMB" % (1 << n): (1 << n) << 20 for n in range(8)}  # 1MB .. 128MB

ROM_BAUD: Final = 115200  # the ROM bootloader syncs at this rate; the stub then switches
DEFAULT_BAUD: Final = 460800  # what MicroPython's instructions use; fine on most USB bridges
BAUDS: Final = (115200, 230400, 460800, 921600, 1500000, 2000000)
# esptool tries its reset strategies in turn, about a second each on a port where nothing
# answers: 4 tries each of them once, so a board that is not listening fails in about 5 s.
DEFAULT_CONNECT_ATTEMPTS: Final = 4
MAX_CONNECT_ATTEMPTS: Final = 20
MAX_IMAGE_BYTES: Final = FLASH_SIZES["128MB"]

ESP_IMAGE_MAGIC: Final = 0xE9
_ESP_HEADER_BYTES: Final = 24  # the image header (8 bytes), then the extended header (16)
_ESP_MAX_SEGMENTS: Final = 16

UF2_BLOCK_BYTES: Final = 512
UF2_MAGIC_START0: Final = 0x0A324655
UF2_MAGIC_START1: Final = 0x9E5D5157
UF2_MAGIC_END: Final = 0x0AB16F30
UF2_FLAG_NOT_MAIN_FLASH: Final = 0x1
UF2_FLAG_FAMILY_ID: Final = 0x2000
UF2_MAX_PAYLOAD_BYTES: Final = 476
RP2040_FAMILY_ID: Final = 0xE48BFF56
RP2040_FLASH_START: Final = 0x10000000  # XIP flash, where a UF2's blocks are written
RP2_DRIVE_LABEL: Final = "RPI-RP2"  # in the INFO_UF2.TXT of an RP2040 in BOOTSEL mode
DRIVE_PATTERNS: Final = ("/media/*/*", "/media/*", "/run/media/*/*", "/mnt/*")
_COPY_CHUNK_BYTES: Final = 64 * 1024

HOLD_BOOT: Final = "hold BOOT, tap RESET (EN), release BOOT, and retry"
BOOTSEL: Final = (
    "hold BOOTSEL while plugging the board in (or hold BOOTSEL and tap RESET), wait for the "
    "RPI-RP2 drive to appear, and retry; or name its folder with --drive"
)


class FlashError(Exception):
    """Flashing failed; the message is one line for the user."""

    exit_status = 1  # the board was asked and did not take the image


class UsageError(FlashError):
    """The options do not make sense together; nothing was touched."""

    exit_status = 2


class ImageError(FlashError):
    """The image is not one for this chip and flash; refused before any port is opened."""

    exit_status = 2


class PortError(FlashError):
    """The serial port does not exist, is busy, or cannot be opened."""


class NoBootloaderError(FlashError):
    """Nothing on the port answered as an ESP ROM bootloader."""


class ChipMismatchError(FlashError):
    """The board is another chip than --chip."""


class DriveNotFoundError(FlashError):
    """No RP2040 in BOOTSEL mode is mounted."""


# -- the image -------------------------------------------------------------------------------------


def read_image(path: Path) -> bytes:
    """The whole image file; ImageError when it cannot be one."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageError("%s: not a file" % path)
        if size > MAX_IMAGE_BYTES:
            raise ImageError("%s: %d bytes, more than any flash it could go to" % (path, size))
        return path.read_bytes()
    except OSError as error:
        raise ImageError("%s: %s" % (path, error.strerror or error)) from None


def check_esp_image(data: bytes, chip: Chip, flash_bytes: int, name: str = "image") -> None:
    """Raise ImageError unless `data` is an ESP image for `chip` that fits `flash_bytes`."""
    if len(data) < _ESP_HEADER_BYTES or data[0] != ESP_IMAGE_MAGIC:
        hint = " (a .uf2 is for --chip rp2040)" if data[:4] == b"UF2\n" else ""
        raise ImageError(
            "%s: not an ESP firmware image (it does not start with 0xE9)%s: take the .bin "
            "for your board from micropython.org/download" % (name, hint)
        )
    if not 1 <= data[1] <= _ESP_MAX_SEGMENTS or data[_ESP_HEADER_BYTES - 1] > 1:
        raise ImageError("%s: not an ESP firmware image (its header is malformed)" % name)
    chip_id = struct.unpack_from("<H", data, 12)[0]
    if chip_id != chip.image_chip_id:
        built_for = next((c.name for c in ESP_CHIPS.values() if c.image_chip_id == chip_id), None)
        if built_for is None:
            raise ImageError(
                "%s: an image for another chip (chip id %d), not %s" % (name, chip_id, chip.name)
            )
        raise ImageError(
            "%s: an image for %s, not %s: take the %s image, or pass --chip %s"
            % (name, built_for, chip.name, chip.name, built_for)
        )
    end = chip.offset + len(data)
    if end > flash_bytes:
        raise ImageError(
            "%s: %d bytes at 0x%x do not fit %s of flash (--flash-size)"
            % (name, len(data), chip.offset, _size_name(flash_bytes))
        )
    # The bootloader's header says how much flash the build's partition table assumes; on a
    # smaller flash the board boots into a table that runs off its end.
    built_bytes = FLASH_SIZES["1MB"] << (data[3] >> 4)
    if built_bytes > flash_bytes:
        raise ImageError(
            "%s: built for %s of flash, the board has %s (--flash-size): take the image for "
            "your board's flash" % (name, _size_name(built_bytes), _size_name(flash_bytes))
        )


def check_uf2(data: bytes, flash_bytes: int, name: str = "image") -> None:
    """Raise ImageError unless `data` is a whole RP2040 UF2 file within `flash_bytes`."""
    hint = " (an ESP32 image? pass its --chip)" if data[:1] == bytes([ESP_IMAGE_MAGIC]) else ""
    if not data or len(data) % UF2_BLOCK_BYTES:
        raise ImageError(
            "%s: not a UF2 file (not whole 512-byte blocks)%s: take the .uf2 for your board "
            "from micropython.org/download" % (name, hint)
        )
    blocks = len(data) // UF2_BLOCK_BYTES
    flash_end = RP2040_FLASH_START + flash_bytes
    for index in range(blocks):
        at = index * UF2_BLOCK_BYTES
        start0, start1, flags, address, size, _, count, family = struct.unpack_from("<8I", data, at)
        end_magic = struct.unpack_from("<I", data, at + UF2_BLOCK_BYTES - 4)[0]
        if (start0, start1, end_magic) != (UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END):
            raise ImageError(
                "%s: not a UF2 file (block %d has no UF2 magic numbers)%s" % (name, index, hint)
            )
        if flags & UF2_FLAG_NOT_MAIN_FLASH:
            continue  # e.g. a comment block: the bootrom skips it
        if flags & UF2_FLAG_FAMILY_ID and family != RP2040_FAMILY_ID:
            raise ImageError(
                "%s: built for another chip (UF2 family 0x%08x, the RP2040's is 0x%08x; an "
                "RP2350 image?)" % (name, family, RP2040_FAMILY_ID)
            )
        if count != blocks:
            raise ImageError(
                "%s: the UF2 says %d blocks, the file holds %d: truncated or joined files"
                % (name, count, blocks)
            )
        if size > UF2_MAX_PAYLOAD_BYTES or not RP2040_FLASH_START <= address <= flash_end - size:
            raise ImageError(
                "%s: block %d writes outside %s of flash at 0x%08x (--flash-size)"
                % (name, index, _size_name(flash_bytes), RP2040_FLASH_START)
            )


def _size_name(size: int) -> str:
    return "%dMB" % (size >> 20) if size >= FLASH_SIZES["1MB"] else "%d bytes" % size


# -- progress --------------------------------------------------------------------------------------


class ProgressBar:
    """A plain text bar: redrawn in place on a terminal, a line per tenth on anything else."""

    width = 30
    label_width = 24

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._percent = -1
        self._open_line = False

    def update(self, done: int, total: int, label: str = "") -> None:
        if total <= 0:
            return
        percent = max(0, min(100, done * 100 // total))
        if percent < self._percent:  # a new bar (esptool may write twice, e.g. on a retry)
            self.finish()
            self._percent = -1
        if self.tty:
            filled = self.width * percent // 100
            shown = label[: self.label_width].ljust(self.label_width)
            drawn = "#" * filled + "-" * (self.width - filled)
            self.stream.write("\r%s [%s] %3d%%" % (shown, drawn, percent))
            self._open_line = True
        elif percent // 10 > self._percent // 10 or self._percent < 0:
            self.stream.write("%s %3d%%\n" % (label, percent))
        self.stream.flush()
        self._percent = percent
        if percent == 100:
            self.finish()

    def finish(self) -> None:
        """End a bar drawn in place, so the next line starts clean."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


# -- ESP32 chips, through esptool ------------------------------------------------------------------


@dataclass(frozen=True)
class EspJob:
    """One image for one ESP32 board; `flash_size` None keeps the image's own header."""

    port: str
    chip: Chip
    image: bytes
    name: str
    baud: int = DEFAULT_BAUD
    flash_size: str | None = None
    erase: bool = True
    connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS


def check_port(path: str) -> None:
    """Open and close `path` the way esptool will (with an exclusive lock), so that a port
    that is missing, busy or forbidden is named as such rather than as a failed connection."""
    if not os.path.exists(path):
        raise PortError(
            "%s: no such port: is the board plugged in? (ls /dev/ttyUSB* /dev/ttyACM*)" % path
        )
    try:
        port = serial.Serial(path, ROM_BAUD, exclusive=True)
    except serial.SerialException as error:
        code = error.errno
        if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            raise PortError(
                "%s: busy: another program has it open (a serial monitor, mpremote, "
                "servomesh serve, ModemManager): close it and retry" % path
            ) from None
        if code in (errno.EACCES, errno.EPERM):
            raise PortError(
                "%s: permission denied: add yourself to the dialout group "
                "(sudo usermod -aG dialout $USER, then log in again)" % path
            ) from None
        if code == errno.ENOENT:
            raise PortError("%s: the port went away: plugged out?" % path) from None
        raise PortError("%s: cannot open it as a serial port: %s" % (path, error)) from None
    port.close()


def flash_esp(job: EspJob, bar: ProgressBar | None = None) -> str:
    """Erase, write and verify `job.image` on the board at `job.port`; reset it. Returns a
    summary line; raises a FlashError naming what went wrong."""
    check_port(job.port)
    # Imported here: every other servomesh command starts faster without esptool.
    import esptool.cmds as cmds  # type: ignore[import-untyped]

    bar = bar if bar is not None else ProgressBar()
    with _esptool_output(bar):
        try:
            esp = cmds.detect_chip(
                port=job.port, baud=ROM_BAUD, connect_attempts=job.connect_attempts
            )
        except (RuntimeError, serial.SerialException, OSError) as error:
            # esptool's FatalError is a RuntimeError. Whatever went wrong here (silence, a boot
            # log instead of the download prompt, garbage), no ROM bootloader is listening.
            reason = _first_line(error)
            if reason.startswith("Failed to connect to "):  # the chip's name, then the reason
                reason = reason.split(": ", 1)[-1]
            raise NoBootloaderError(
                "%s: no ESP bootloader answered in %d connection attempt%s (%s): %s"
                % (
                    job.port,
                    job.connect_attempts,
                    "" if job.connect_attempts == 1 else "s",
                    reason,
                    HOLD_BOOT,
                )
            ) from None
        with esp:  # closes the port, which the stub's loader below shares
            if job.chip.esptool_name != esp.CHIP_NAME:
                found = next(
                    (c.name for c in ESP_CHIPS.values() if c.esptool_name == esp.CHIP_NAME),
                    None,
                )
                hint = (
                    "pass --chip %s with an image for it" % found
                    if found
                    else "servomesh flash does not support it"
                )
                raise ChipMismatchError(
                    "%s: the board is an %s, not an %s (--chip %s): %s"
                    % (job.port, esp.CHIP_NAME, job.chip.esptool_name, job.chip.name, hint)
                )
            with _step(job, "loading esptool's flasher stub"):
                esp = cmds.run_stub(esp)
            if job.baud != ROM_BAUD:
                with _step(job, "switching to %d baud" % job.baud):
                    esp.change_baud(job.baud)
            with _step(job, "reading the flash chip"):
                cmds.attach_flash(esp)
            if job.erase:
                print("servomesh flash: erasing the whole flash (up to a minute)", file=sys.stderr)
                with _step(job, "erasing"):
                    cmds.erase_flash(esp)
            # write_flash verifies what it wrote: it compares the flash's MD5 with the image's
            # and raises when they differ.
            with _step(job, "writing"):
                cmds.write_flash(
                    esp, [(job.chip.offset, job.image)], flash_size=job.flash_size or "keep"
                )
            restarted = "the board restarted"
            try:
                cmds.reset_chip(esp, "hard-reset")
            except (RuntimeError, serial.SerialException, OSError) as error:
                # The image is in and verified: a board that missed the reset is no failure.
                _log.debug("%s: reset: %s", job.port, error)
                restarted = "press RESET (EN) to start it"
    return "flashed %s (%d bytes) at 0x%x on the %s at %s, verified; %s" % (
        job.name,
        len(job.image),
        job.chip.offset,
        job.chip.esptool_name,
        job.port,
        restarted,
    )


@contextlib.contextmanager
def _step(job: EspJob, what: str) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, serial.SerialException, OSError) as error:
        text = _first_line(error)
        if "MD5" in text:
            text = "verification failed, the flash does not hold the image (%s)" % text
        raise FlashError(
            "%s: %s failed: %s; flash again (a lower --baud helps on long or poor USB cables, "
            "and the board may need: %s)" % (job.port, what, text, HOLD_BOOT)
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def _esptool_output(bar: ProgressBar) -> Iterator[None]:
    """Route esptool's output: its progress to `bar`, its messages to servomesh's log (debug;
    warnings as warnings), instead of esptool's own console. Restores esptool's logger."""
    from esp_pylib.logger import EspLog, EspLogBase

    class EsptoolLog(EspLogBase):
        def print(self, *args: Any, **kwargs: Any) -> None:
            text = " ".join(str(arg) for arg in args).strip()
            if text.strip("."):  # esptool prints a dot per connection attempt
                _log.debug("esptool: %s", text)

        def err(self, *args: Any, suggestion: str | None = None) -> None:
            _log.warning("esptool: %s", " ".join(str(arg) for arg in args))

        def warn(self, *args: Any, suggestion: str | None = None) -> None:
            _log.warning("esptool: %s", " ".join(str(arg) for arg in args))

        def note(self, *args: Any) -> None:
            self.print(*args)

        def hint(self, *args: Any) -> None:
            self.print(*args)

        def debug(self, *args: Any) -> None:
            self.print(*args)

        def set_verbosity(self, mode: int | str) -> None:
            pass  # servomesh's log level decides

        def progress_bar(
            self,
            cur_iter: int,
            total_iters: int,
            prefix: str = "",
            suffix: str = "",
            bar_length: int = 30,
        ) -> None:
            bar.update(cur_iter, total_iters, prefix.strip())

    previous = EspLog.instance
    EspLog.set_logger(EsptoolLog())
    try:
        yield
    finally:
        bar.finish()
        if previous is not None:
            EspLog.set_logger(previous)


# -- RP2040, through its BOOTSEL drive -------------------------------------------------------------


def is_rp2_drive(folder: Path) -> bool:
    """Whether `folder` is the drive of an RP2040 in BOOTSEL mode."""
    try:
        with (folder / "INFO_UF2.TXT").open(encoding="ascii", errors="replace") as info:
            return RP2_DRIVE_LABEL in info.read(4096)
    except OSError:
        return False


def find_rp2_drives(patterns: Sequence[str] = DRIVE_PATTERNS) -> list[Path]:
    """The mounted RPI-RP2 drives, found under the usual mount points."""
    found: list[Path] = []
    for pattern in patterns:
        for folder in sorted(glob.glob(pattern)):
            path = Path(folder)
            if path not in found and is_rp2_drive(path):
                found.append(path)
    return found


def flash_rp2040(
    image: bytes,
    name: str,
    drive: Path | None = None,
    bar: ProgressBar | None = None,
    patterns: Sequence[str] | None = None,
) -> str:
    """Copy a checked UF2 image to the RPI-RP2 drive: `drive`, or the one mounted where
    `patterns` (default DRIVE_PATTERNS) look."""
    if drive is not None:
        if not is_rp2_drive(drive):
            raise DriveNotFoundError(
                "%s: not an RP2040 in BOOTSEL mode (no INFO_UF2.TXT naming %s): %s"
                % (drive, RP2_DRIVE_LABEL, BOOTSEL)
            )
    else:
        drives = find_rp2_drives(DRIVE_PATTERNS if patterns is None else patterns)
        if not drives:
            raise DriveNotFoundError("no RPI-RP2 drive is mounted: %s" % BOOTSEL)
        if len(drives) > 1:
            raise DriveNotFoundError(
                "%d RPI-RP2 drives are mounted (%s): name one with --drive"
                % (len(drives), ", ".join(map(str, drives)))
            )
        drive = drives[0]
    bar = bar if bar is not None else ProgressBar()
    target = drive / Path(name).name
    written = 0
    try:
        with target.open("wb") as file:
            for start in range(0, len(image), _COPY_CHUNK_BYTES):
                chunk = image[start : start + _COPY_CHUNK_BYTES]
                file.write(chunk)
                file.flush()
                written += len(chunk)
                bar.update(written, len(image), "copying to " + RP2_DRIVE_LABEL)
            os.fsync(file.fileno())
    except OSError as error:
        # The bootrom restarts the board as soon as it has every block, and the drive vanishes:
        # an error once every byte is out is that, on purpose, not a failure.
        if written < len(image):
            raise FlashError(
                "%s: the copy stopped after %d of %d bytes (%s): %s"
                % (drive, written, len(image), error.strerror or error, BOOTSEL)
            ) from None
        _log.debug("%s: %s after the last byte: the board has restarted", drive, error)
    finally:
        bar.finish()
    return "copied %s (%d bytes) to %s; the board restarts into MicroPython" % (
        Path(name).name,
        len(image),
        drive,
    )


# -- the command -----------------------------------------------------------------------------------


def flash(
    chip: str,
    firmware: str | os.PathLike[str],
    port: str | None = None,
    *,
    baud: int = DEFAULT_BAUD,
    flash_size: str | None = None,
    erase: bool = True,
    connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
    drive: str | os.PathLike[str] | None = None,
    bar: ProgressBar | None = None,
) -> str:
    """Check the image, then flash it (see the module docstring). Returns a summary line;
    raises a FlashError subclass."""
    if chip != RP2040 and chip not in ESP_CHIPS:
        raise UsageError("chip %r is not supported: choose %s" % (chip, ", ".join(CHIPS)))
    if flash_size is not None and flash_size not in FLASH_SIZES:
        raise UsageError("flash size %r: choose %s" % (flash_size, ", ".join(FLASH_SIZES)))
    path = Path(firmware)
    if chip == RP2040:
        if drive is None and port is not None:
            _log.debug("--port is not used for rp2040: the board is flashed as a drive")
        image = read_image(path)
        check_uf2(image, FLASH_SIZES[flash_size or RP2040_FLASH_SIZE], str(path))
        return flash_rp2040(image, path.name, Path(drive) if drive else None, bar)
    if port is None:
        raise UsageError("--port is required for %s: the board's serial port" % chip)
    if drive is not None:
        raise UsageError("--drive is only for rp2040")
    if not 1 <= connect_attempts <= MAX_CONNECT_ATTEMPTS:
        raise UsageError("connect attempts: 1 to %d" % MAX_CONNECT_ATTEMPTS)
    esp_chip = ESP_CHIPS[chip]
    image = read_image(path)
    check_esp_image(image, esp_chip, FLASH_SIZES[flash_size or esp_chip.flash_size], str(path))
    job = EspJob(port, esp_chip, image, str(path), baud, flash_size, erase, connect_attempts)
    return flash_esp(job, bar)


def add_arguments(commands: Any) -> None:
    parser = commands.add_parser(
        "flash",
        help="put a MicroPython firmware image on a board (ESP32 over USB, RP2040 as a drive)",
        description="ESP32 chips: erase the flash, write the image at the chip's offset over "
        "the serial port with esptool, verify it, and restart the board. RP2040: copy the .uf2 "
        "to the board's RPI-RP2 drive (BOOTSEL mode). The image is checked before the board is "
        "touched. Exit status: 0 flashed, 1 the board did not take it, 2 a bad image or usage.",
    )
    parser.add_argument("--chip", required=True, choices=CHIPS, help="the board's chip")
    parser.add_argument(
        "--firmware",
        required=True,
        metavar="FILE",
        help="MicroPython image from micropython.org/download: .bin for ESP32 chips, .uf2 for "
        "rp2040",
    )
    parser.add_argument(
        "--port", metavar="PORT", help="ESP32 chips: serial port, e.g. /dev/ttyUSB0"
    )
    parser.add_argument(
        "--baud",
        type=int,
        choices=BAUDS,
        default=DEFAULT_BAUD,
        metavar="N",
        help="ESP32 chips: baud rate for writing (default %d; %s)"
        % (DEFAULT_BAUD, ", ".join(map(str, BAUDS))),
    )
    parser.add_argument(
        "--flash-size",
        choices=FLASH_SIZES,
        metavar="SIZE",
        help="the board's flash, checked against the image (default 4MB; 8MB for esp32s3, "
        "2MB for rp2040); given, it is also written into an ESP image's header",
    )
    parser.add_argument(
        "--no-erase",
        dest="erase",
        action="store_false",
        help="ESP32 chips: keep the rest of the flash (the filesystem with servomesh.json); "
        "only the image's sectors are rewritten",
    )
    parser.add_argument(
        "--connect-attempts",
        type=int,
        default=DEFAULT_CONNECT_ATTEMPTS,
        metavar="N",
        help="ESP32 chips: bootloader connection attempts, about 1 s each (default %d)"
        % DEFAULT_CONNECT_ATTEMPTS,
    )
    parser.add_argument(
        "--drive",
        metavar="PATH",
        help="rp2040: the RPI-RP2 drive's folder (default: looked for under /media, "
        "/run/media and /mnt)",
    )


def run(options: argparse.Namespace) -> int:
    try:
        summary = flash(
            options.chip,
            options.firmware,
            options.port,
            baud=options.baud,
            flash_size=options.flash_size,
            erase=options.erase,
            connect_attempts=options.connect_attempts,
            drive=options.drive,
        )
    except FlashError as error:
        print("servomesh flash: %s" % error, file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(
            "servomesh flash: interrupted: the board may hold part of an image; flash it again",
            file=sys.stderr,
        )
        return 130
    print(summary)
    return 0
