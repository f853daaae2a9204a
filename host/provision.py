"""`servomesh provision`: a datagram key per node (or one for the whole fleet) in key files only
their owner can read, and the `key_file` lines to add to the fleet config.

Keys are never printed: the host reads them from the key files (docs/fleet.md, section 3) and
`servomesh deploy --key-file` puts the same key into the board's servomesh.json, whose `key`
value `node_key_hex` gives.
docs/boards.md walks through flash, deploy and provision.
"""

import argparse
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from servomesh.host import fleet_config
from servomesh.host.fleet import FleetError, read_key

KEY_BYTES: Final = 32  # SHA-256's output size, all HMAC-SHA256 can use; read_key wants this
FLEET_KEY_NAME: Final = "fleet"  # --per-fleet writes <keys dir>/fleet.key


class ProvisionError(Exception):
    """Provisioning could not be done as asked; the message is one line for the user."""


@dataclass(frozen=True)
class Provisioned:
    """A node given a key: its config name and key file, and whether the config already says
    `key_file = <that file>` (then there is no line to add)."""

    node: str
    key_file: Path
    in_config: bool


@dataclass(frozen=True)
class Result:
    config: Path
    provisioned: tuple[Provisioned, ...]
    written: tuple[Path, ...]  # each key file written, once (--per-fleet shares one)
    replaced: tuple[Path, ...]  # those of them that held a key before (--force)
    reused: tuple[Path, ...]  # --per-fleet without --force: the fleet key file there already
    skipped: tuple[str, ...]  # nodes left alone: they have a key_file and there was no --force

    def toml_lines(self) -> str:
        """The `[nodes.NAME]` / `key_file = ...` lines to add, paths relative to the config."""
        tables = [
            "[nodes.%s]\nkey_file = %s\n" % (item.node, json.dumps(self.relative(item.key_file)))
            for item in self.provisioned
            if not item.in_config
        ]
        return "\n".join(tables)

    def relative(self, path: Path) -> str:
        """`path` as the config should name it: relative to its folder when inside it."""
        base = self.config.resolve().parent
        return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def default_keys_dir(config: Path) -> Path:
    """`arm.toml` keeps its keys in `arm.keys/` beside it, as `servomesh sim` does."""
    return config.resolve().with_name(config.stem + ".keys")


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def write_key_file(path: Path, key: bytes, replace: bool = False) -> None:
    """Write `key` as 64 hex digits and a newline, readable and writable by its owner only.

    Without `replace`, FileExistsError when `path` exists: creating the file with O_EXCL is the
    one step that decides, so two runs never both write it. With `replace`, the new file is
    complete on disk before it takes the old one's place, so a reader never sees half a key.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(".%s.%s.tmp" % (path.name, secrets.token_hex(4)))
    target = temporary if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only take bits away; this states them all
        with os.fdopen(fd, "w", encoding="ascii") as file:
            fd = -1  # the file object owns it now
            file.write(key.hex() + "\n")
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(target, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(target)  # never leave a partial key behind
        raise


def node_key_hex(path: str | os.PathLike[str]) -> str:
    """The `"key"` of a node's servomesh.json for a key file: 64 lower-case hex digits.
    Raises FleetError for a missing or malformed key file (never showing its content)."""
    return read_key(Path(path)).hex()


def provision(
    config: str | os.PathLike[str],
    nodes: Sequence[str] | None = None,
    *,
    per_fleet: bool = False,
    force: bool = False,
    keys_dir: str | os.PathLike[str] | None = None,
) -> Result:
    """Give the named nodes (default: every node) a new key; see the module docstring.

    A node whose `key_file` exists is left alone unless `force`: then that file gets a new key
    (per node), or the node is pointed at the fleet key (`per_fleet`). A `key_file` that is
    named but missing is written where it is named. Without `force`, an existing fleet key
    file is used as it is, so later runs add nodes to it. Raises FleetConfigError for a bad
    config, FleetError for a bad fleet key file, ProvisionError otherwise.
    """
    path = Path(config)
    fleet = fleet_config.load(path)
    names = list(dict.fromkeys(nodes)) if nodes else list(fleet.nodes)
    unknown = [name for name in names if name not in fleet.nodes]
    if unknown:
        raise ProvisionError(
            "no node %s in %s (its nodes: %s)" % (unknown[0], path, ", ".join(fleet.nodes))
        )
    folder = Path(keys_dir).resolve() if keys_dir is not None else default_keys_dir(path)
    fleet_file = folder / (FLEET_KEY_NAME + ".key")
    plan: dict[str, Path] = {}  # node -> the key file it gets
    skipped: list[str] = []
    for name in names:
        own = fleet.nodes[name].key_file
        if own is not None and own.exists() and not force:
            skipped.append(name)
        elif own is not None and not own.exists():
            plan[name] = own  # the config names it already: write it there
        elif per_fleet:
            plan[name] = fleet_file
        else:
            plan[name] = own if own is not None else folder / (name + ".key")
    reused = per_fleet and not force and fleet_file.exists()
    if not force:
        # Refuse before writing any key rather than halfway; O_EXCL still decides a race.
        for name, key_file in plan.items():
            if key_file.exists() and not (reused and key_file == fleet_file):
                raise _exists(key_file, name, path)
    # A later --per-fleet run for new nodes gives them the key the other boards have rather
    # than changing it under them; read_key makes sure it is one.
    fleet_key = (read_key(fleet_file) if reused else new_key()) if per_fleet else None
    written: list[Path] = []
    replaced: list[Path] = []
    for name, key_file in plan.items():
        if key_file in written or (reused and key_file == fleet_file):
            continue
        existed = key_file.exists()
        try:
            write_key_file(key_file, fleet_key or new_key(), replace=force)
        except FileExistsError:
            raise _exists(key_file, name, path) from None
        except OSError as error:
            raise ProvisionError("%s: %s" % (key_file, error.strerror or error)) from None
        written.append(key_file)
        if existed:
            replaced.append(key_file)
    provisioned = tuple(
        Provisioned(name, key_file, fleet.nodes[name].key_file == key_file)
        for name, key_file in plan.items()
    )
    used = (fleet_file,) if reused and fleet_file in plan.values() else ()
    return Result(path, provisioned, tuple(written), tuple(replaced), used, tuple(skipped))


def _exists(key_file: Path, node: str, config: Path) -> ProvisionError:
    return ProvisionError(
        "%s exists and is not the key_file of %s in %s: name it there as key_file, or pass "
        "--force to replace the key it holds" % (key_file, node, config)
    )


def add_arguments(commands: Any) -> None:
    parser = commands.add_parser(
        "provision",
        help="make a datagram key per node (or per fleet) and print the key_file lines to add",
        description="Writes a new 32-byte key for each node (or one for the fleet) into a key "
        "file readable by its owner only (mode 0600), by default in CONFIG's folder as "
        "<config name>.keys/<node>.key, and prints the TOML lines that name them in the "
        "config. Keys are never printed. A node whose table already has a key_file is left "
        "alone unless --force. Exit status: 0 done, 2 on errors.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")
    parser.add_argument(
        "--node",
        action="append",
        metavar="NAME",
        help="only this node (a [nodes.NAME] of the config); repeatable; default every node",
    )
    parser.add_argument(
        "--per-fleet", action="store_true", help="one key shared by every node given"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also give nodes that have a key_file a new key, replacing the key file's key",
    )
    parser.add_argument(
        "--keys-dir",
        metavar="DIR",
        help="where new key files go (default: <config name>.keys/ beside the config)",
    )


def run(options: argparse.Namespace) -> int:
    try:
        result = provision(
            options.config,
            options.node,
            per_fleet=options.per_fleet,
            force=options.force,
            keys_dir=options.keys_dir,
        )
    except (fleet_config.FleetConfigError, FleetError, ProvisionError) as error:
        print("servomesh provision: %s" % error, file=sys.stderr)
        return 2
    _report(result)
    return 0


def _report(result: Result) -> None:
    """The TOML lines on stdout (so they can be redirected); what happened on stderr."""

    def note(text: str) -> None:
        print("servomesh provision: %s" % text, file=sys.stderr)

    for name in result.skipped:
        note("%s already has its key file: left alone (--force gives it a new key)" % name)
    for path in result.reused:
        note("using the fleet key already in %s" % result.relative(path))
    if not result.provisioned:
        note("no node to provision")
        return
    if result.written:
        files = ", ".join(result.relative(path) for path in result.written)
        note("wrote %s (mode 0600; keep key files private, never commit them)" % files)
    if result.replaced:
        note(
            "replaced the key in %s: boards that have the old key refuse the host until they "
            "get the new one" % ", ".join(result.relative(path) for path in result.replaced)
        )
    lines = result.toml_lines()
    if lines:
        print(lines, end="")
        note("add the lines above to %s, under each node's table" % result.config)
    else:
        note("%s already names these key files" % result.config)
    note("then give each board its key: servomesh deploy --port PORT --key-file FILE ...")
