"""`servomesh nodes`, `servomesh move` and `servomesh stop`: scripting against a fleet config."""

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from servomesh.host import fleet_config
from servomesh.host.fleet import Fleet, FleetError
from servomesh.host.session import NodeError

READY_TIMEOUT_S = 3.0
_COLUMNS = ("name", "state", "link", "node_id", "firmware", "rtt_ms", "retries", "why")


def add_arguments(commands: Any) -> None:
    nodes = commands.add_parser("nodes", help="list the nodes of a fleet config and their state")
    nodes.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")
    nodes.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    move = commands.add_parser("move", help="move joints: servomesh move elbow=45 wrist=-10")
    move.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")
    move.add_argument("targets", nargs="+", metavar="JOINT=DEG")
    move.add_argument("--ms", type=int, default=0, help="duration (default: as fast as allowed)")
    stop = commands.add_parser("stop", help="stop every node (latched until servomesh clear)")
    stop.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")
    stop.add_argument("--release", action="store_true", help="let the servos go limp")
    clear = commands.add_parser("clear", help="clear a stop; moves nothing")
    clear.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")


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
    fleet = Fleet.from_config(options.config, source="cli")
    try:
        await fleet.start(READY_TIMEOUT_S)
        if options.command == "nodes":
            rows = fleet.nodes()
            if options.json:
                print(json.dumps(rows, indent=2))
            else:
                _table(rows)
            return 0 if all(row["state"] == "ready" for row in rows) else 1
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


def _table(rows: list[dict[str, Any]]) -> None:
    cells = [[_cell(row[column]) for column in _COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(_COLUMNS)]
    for line in [list(_COLUMNS), *cells]:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.2f" % value
    return str(value)


def run(options: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="servomesh: %(name)s: %(message)s")
    try:
        return asyncio.run(_run(options))
    except (fleet_config.FleetConfigError, FleetError, NodeError) as error:
        print("servomesh %s: %s" % (options.command, error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
