"""`servomesh demo`: the example fleet on simulated boards, with the API and the dashboard.

Three simulated boards run the real node firmware, one of them on a pty serial link (the arm's
wrist, on USB in the example too). The example fleet (examples/arm.toml: a 6-joint arm on two
nodes and a pan-tilt head) is pointed at them, and `servomesh serve` runs on loopback until
Ctrl-C, which stops the server, the fleet and every board.
"""

import tempfile
from importlib import resources
from pathlib import Path
from typing import Final

from servomesh.host import cli_serve, fleet_config, sim
from servomesh.host.fleet import Fleet
from servomesh.host.sim import Simulator

EXAMPLE: Final = "arm.toml"
# Board order: the Simulator gives the first `serial` boards a pty.
NODES: Final = ("arm-wrist", "arm-base", "head")
SERIAL_NODES: Final = 1
READY_TIMEOUT_S: Final = 15.0


def example() -> fleet_config.Fleet:
    text = (resources.files("servomesh.examples") / EXAMPLE).read_text()
    return fleet_config.loads(text, EXAMPLE)


def on_sim_boards(config: fleet_config.Fleet) -> fleet_config.Fleet:
    """`config` with every node a simulated board (no I2C)."""
    nodes = {
        name: node.model_copy(update={"board": "sim", "i2c": None})
        for name, node in config.nodes.items()
    }
    return config.model_copy(update={"nodes": nodes})


def simulated(
    config: fleet_config.Fleet, boards: sim.Simulator, folder: Path
) -> fleet_config.Fleet:
    """`config` (on_sim_boards) with its nodes on the running boards (same order as NODES),
    their keys in key files, and its data in `folder`."""
    keys = folder / "keys"
    keys.mkdir(mode=0o700)
    nodes = {}
    for name, board in zip(NODES, boards.boards, strict=True):
        if board.key is None:
            raise RuntimeError("simulated board %s has no key" % board.node_id)
        key_file = sim.write_key_file(keys / (name + ".key"), board.key)
        link = fleet_config.parse_link(board.url)
        nodes[name] = config.nodes[name].model_copy(update={"link": link, "key_file": key_file})
    host = config.host.model_copy(update={"data_dir": folder / "data"})
    return config.model_copy(update={"nodes": nodes, "host": host})


def run(port: int = cli_serve.DEFAULT_PORT) -> int:
    config = on_sim_boards(example())
    with tempfile.TemporaryDirectory(prefix="servomesh-demo-") as temporary:
        folder = Path(temporary)
        with Simulator(
            nodes=len(NODES),
            serial=SERIAL_NODES,
            folder=folder / "boards",
            # What the fleet would push, so the boards start without a config reboot.
            configs=[config.node_config(name) for name in NODES],
        ) as boards:
            boards.wait_all_running(READY_TIMEOUT_S)
            for name, board in zip(NODES, boards.boards, strict=True):
                print("node %-9s %s" % (name, board.url), flush=True)
            fleet = Fleet(simulated(config, boards, folder), source="api")
            print("dashboard: http://127.0.0.1:%d/  (Ctrl-C stops everything)" % port, flush=True)
            cli_serve.serve(fleet, "127.0.0.1", port)
    print("demo stopped: server, fleet and boards", flush=True)
    return 0
