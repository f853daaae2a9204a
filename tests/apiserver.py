"""A real `servomesh serve` app on a real uvicorn server in a thread, for the API tests."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from servomesh.host.api.app import create_app
from servomesh.host.api.auth import Role, TokenStore, new_token
from servomesh.host.fleet import Fleet
from servomesh.host.ports import free_ports
from servomesh.host.session import SessionOptions

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
FAST = SessionOptions(request_timeout_s=0.5, backoff_max_s=0.3)


def free_port() -> int:
    """A TCP port for a server started next; never one a client's connect could be given."""
    (port,) = free_ports(1, socket.SOCK_STREAM)
    return port


def make_tokens(path: Path) -> dict[str, str]:
    """One token per role in a fresh tokens file: role label -> token."""
    return {role.label: new_token(path, role.label + "-user", role) for role in Role}


@contextmanager
def running(
    config: Path, tokens: TokenStore | None = None, origins: frozenset[str] = frozenset()
) -> Iterator[str]:
    """Serve the fleet of `config` on 127.0.0.1; yields the base URL. Stops it on exit."""
    fleet = Fleet.from_config(config, source="api", options=FAST)
    app = create_app(fleet, tokens=tokens, origins=origins)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_config=None)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield "http://127.0.0.1:%d" % port
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
