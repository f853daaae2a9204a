"""`servomesh nodes`, `move`, `stop` and `clear`: scripting against a fleet config, and
finding nodes (`nodes` without a config, or with --discover)."""

import argparse
import asyncio
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from servomesh.host import discovery, fleet_config
from servomesh.host.fleet import Fleet, FleetError, read_key
from servomesh.host.session import NodeError

READY_TIMEOUT_S = 3.0
# More for a node that answered, then rebooted to apply the config: a board boots and joins
# Wi-Fi again in a few seconds. A node that never answers is reported after READY_TIMEOUT_S.
REBOOT_GRACE_S = 15.0
MAX_TIMEOUT_S = 60.0
_COLUMNS = ("name", "state", "link", "node_id", "firmware", "rtt_ms", "retries", "why")
_FOUND_COLUMNS = (
    "link",
    "node_id",
    "firmware",
    "protocol_version",
    "board",
    "channels",
    "key",
    "status",
    "why",
)
# With --config, these only mean something together with --discover.
_DISCOVERY_OPTIONS = ("broadcast", "port", "target", "serial", "scan", "key_file", "timeout")


def add_arguments(commands: Any) -> None:
    nodes = commands.add_parser(
        "nodes",
        help="list the nodes that answer discovery, or those of a fleet config and their state",
        description="Without --config: send DISCOVER to the broadcast address, HELLO to the "
        "USB serial ports of known boards, and list what answers. With --config: the "
        "config's nodes and their state; --discover also lists the nodes that answer but are "
        "not in the config. Exit status: 0 when a node answered (with --config: when every "
        "node is ready), 1 when not, 2 on errors.",
    )
    nodes.add_argument("--config", metavar="FILE", help="fleet config (TOML)")
    nodes.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    nodes.add_argument(
        "--discover",
        action="store_true",
        help="with --config: also list nodes that answer but are not in it (signing with its keys)",
    )
    look = nodes.add_argument_group(
        "discovery",
        "By default DISCOVER goes to the broadcast address and every USB serial port of a known "
        "board gets HELLO. Naming --broadcast, --target or --serial asks only those; --scan "
        "adds the USB serial ports back.",
    )
    look.add_argument(
        "--broadcast",
        action="append",
        type=_ipv4,
        metavar="ADDR",
        help="IPv4 broadcast address (default %s, or the config's discovery_broadcast); "
        "repeatable" % discovery.DEFAULT_BROADCAST,
    )
    look.add_argument(
        "--port",
        action="append",
        type=_port,
        metavar="N",
        help="UDP port for broadcasts (default %d, or the config's discovery_port); repeatable"
        % discovery.DEFAULT_PORT,
    )
    look.add_argument(
        "--target",
        action="append",
        type=_target,
        metavar="HOST:PORT",
        help="ask one node directly (unicast, IPv4); repeatable",
    )
    look.add_argument(
        "--serial", action="append", metavar="PATH", help="send HELLO on this port; repeatable"
    )
    look.add_argument("--scan", action="store_true", help="probe USB serial ports of known boards")
    look.add_argument(
        "--key-file",
        action="append",
        metavar="FILE",
        help="sign DISCOVER with this key too (key id 1); a node with a key answers only its "
        "own; repeatable",
    )
    look.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="seconds to wait for answers (default %.1f)" % discovery.DEFAULT_TIMEOUT_S,
    )
    move = commands.add_parser("move", help="move joints: servomesh move elbow=45 wrist=-10")
    move.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")
    move.add_argument("targets", nargs="+", metavar="JOINT=DEG")
    move.add_argument("--ms", type=int, default=0, help="duration (default: as fast as allowed)")
    stop = commands.add_parser("stop", help="stop every node (latched until servomesh clear)")
    stop.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")
    stop.add_argument("--release", action="store_true", help="let the servos go limp")
    clear = commands.add_parser("clear", help="clear a stop; moves nothing")
    clear.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an IPv4 address" % text) from None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError("%r is not a port (1 .. 65535)" % text)
    return int(text)


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or ":" in host:
        raise argparse.ArgumentTypeError("%r: write HOST:PORT (IPv4 or a name)" % text)
    return host, _port(port)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError("%r: seconds above 0, at most %g" % (text, MAX_TIMEOUT_S))
    return seconds


def _targets(items: list[str]) -> dict[str, float]:
    targets = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            targets[name] = float(value)
        except ValueError:
            raise FleetError("%r: write JOINT=DEGREES, e.g. elbow=45" % item) from None
    return targets


async def _run(options: argparse.Namespace) -> int:
    if options.command == "nodes":
        return await _nodes(options)
    fleet = Fleet.from_config(options.config, source="cli")
    try:
        await fleet.start(READY_TIMEOUT_S, REBOOT_GRACE_S)
        if options.command == "move":
            trace = await fleet.move(_targets(options.targets), options.ms)
        elif options.command == "stop":
            trace = await fleet.stop(release=options.release)
        else:
            trace = await fleet.clear()
        print("ok, trace %d" % trace)
        return 0
    finally:
        await fleet.close()


async def _nodes(options: argparse.Namespace) -> int:
    if options.config is None:
        answered = await _discover(options, None)
        rows = [node.row() for node in answered.found]
        if options.json:
            print(json.dumps(rows, indent=2, default=_jsonable))
        elif rows:
            _table(rows, _FOUND_COLUMNS)
        _notes(answered)
        if not rows:
            hint = (
                ""
                if options.key_file
                else " (a node with a key answers only DISCOVER signed with it: --key-file)"
            )
            print("servomesh nodes: no node answered%s" % hint, file=sys.stderr)
        return 0 if rows else 1
    named = [name for name in _DISCOVERY_OPTIONS if getattr(options, name)]
    if named and not options.discover:
        raise discovery.DiscoveryError(
            "--%s needs --discover when --config is given" % named[0].replace("_", "-")
        )
    fleet = Fleet.from_config(options.config, source="cli")
    try:
        # Before the sessions start: discovery probes only the serial ports they will not use.
        found = await _discover(options, fleet.config) if options.discover else None
        await fleet.start(READY_TIMEOUT_S, REBOOT_GRACE_S)
        rows = fleet.nodes()
    finally:
        await fleet.close()
    ready = all(row["state"] == "ready" for row in rows)
    if found is None:
        if options.json:
            print(json.dumps(rows, indent=2))
        else:
            _table(rows, _COLUMNS)
        return 0 if ready else 1
    known = {node.node_id for node in fleet.config.nodes.values()}
    others = [node.row() for node in found.found if node.node_id not in known]
    if options.json:
        print(json.dumps({"nodes": rows, "discovered": others}, indent=2, default=_jsonable))
    else:
        _table(rows, _COLUMNS)
        print()
        if others:
            print("answering, not in %s:" % options.config)
            _table(others, _FOUND_COLUMNS)
        else:
            print("no node outside %s answered" % options.config)
    _notes(found)
    return 0 if ready else 1


def _discovery_keys(
    options: argparse.Namespace, config: fleet_config.Fleet | None
) -> list[discovery.DiscoveryKey]:
    """The --key-file keys, then the config's; a key is known by its file's name."""
    keys = [discovery.DiscoveryKey(name, read_key(Path(name))) for name in options.key_file or ()]
    if config is not None:
        for node in config.nodes.values():
            if node.key_file is not None:
                key = read_key(node.key_file)
                keys.append(discovery.DiscoveryKey(str(node.key_file), key, node.key_id))
    return keys


async def _discover(
    options: argparse.Namespace, config: fleet_config.Fleet | None
) -> discovery.Discovery:
    broadcast, port = discovery.DEFAULT_BROADCAST, discovery.DEFAULT_PORT
    in_use: list[str] = []
    if config is not None:
        broadcast, port = config.host.discovery_broadcast, config.host.discovery_port
        in_use = [node.link.path for node in config.nodes.values() if node.link.scheme == "serial"]
    named = options.broadcast or options.target or options.serial
    return await discovery.discover(
        broadcasts=options.broadcast or ([] if named else [broadcast]),
        ports=options.port or [port],
        targets=options.target or [],
        keys=_discovery_keys(options, config),
        serial_paths=options.serial or [],
        scan_usb=options.scan or not named,
        skip_serial=in_use,
        timeout_s=options.timeout or discovery.DEFAULT_TIMEOUT_S,
    )


def _notes(found: discovery.Discovery) -> None:
    for note in found.notes:
        print("servomesh nodes: %s" % note, file=sys.stderr)


def _jsonable(value: object) -> object:
    """INFO may hold what JSON has no form for (byte strings): hex, or the value's text."""
    return value.hex() if isinstance(value, bytes) else str(value)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    cells = [[_cell(row[column]) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.2f" % value
    return str(value)


def run(options: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(options))
    except (
        fleet_config.FleetConfigError,
        FleetError,
        NodeError,
        discovery.DiscoveryError,
    ) as error:
        print("servomesh %s: %s" % (options.command, error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
