"""`servomesh serve` (the HTTP API, telemetry and dashboard for a fleet config) and
`servomesh token` (bearer tokens for it). docs/api.md describes both."""

import argparse
import ipaddress
import signal
import sys
from types import FrameType
from typing import Any, Final

from servomesh.host import fleet_config
from servomesh.host.api.auth import Role, TokenFileError, TokenStore, new_token
from servomesh.host.fleet import Fleet, FleetError

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000


def add_arguments(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve the HTTP API, telemetry and dashboard of a fleet config"
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="fleet config (TOML)")
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
    serve.add_argument(
        "--tokens", metavar="FILE", help="bearer tokens (servomesh token); required off loopback"
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another web origin allowed to call the API (repeatable), e.g. http://tool:3000",
    )
    token = commands.add_parser("token", help="create a bearer token for servomesh serve")
    token.add_argument("--tokens", required=True, metavar="FILE", help="the tokens file")
    token.add_argument("--role", required=True, choices=[role.label for role in Role])
    token.add_argument("--name", required=True, help="who uses it (shown in the operation log)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def serve(
    fleet: Fleet,
    host: str,
    port: int,
    tokens: TokenStore | None = None,
    origins: frozenset[str] = frozenset(),
) -> None:
    """Run the API for `fleet` until Ctrl-C or SIGTERM. ValueError when bound off loopback
    without tokens."""
    if not tokens and not is_loopback(host):
        raise ValueError(
            "refusing to listen on %s without tokens: anyone who reaches it could move the "
            "servos. Create some with servomesh token and pass --tokens FILE" % host
        )
    # Imported here: every other servomesh command starts faster without the web stack.
    import uvicorn

    from servomesh.host.api.app import create_app

    app = create_app(fleet, tokens=tokens, origins=origins)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # a line per request would drown the fleet's own records
        log_config=None,  # servomesh's logging (logs.setup) formats every record
        lifespan="on",
        ws_max_size=64 * 1024,
        # A telemetry client that never reads would hold the shutdown forever otherwise, and
        # the fleet would never be closed.
        timeout_graceful_shutdown=3,
    )
    # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again with
    # the handlers it found: make both a KeyboardInterrupt, caught here, so whoever called
    # serve() closes what it opened (the demo's boards and temporary folder).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(options: argparse.Namespace) -> int:
    if options.command == "token":
        try:
            token = new_token(options.tokens, options.name, Role[options.role.upper()])
        except (TokenFileError, OSError) as error:
            print("servomesh token: %s" % error, file=sys.stderr)
            return 2
        print(token)
        print(
            "servomesh token: added %s (%s) to %s; the token above is shown only now"
            % (options.name, options.role, options.tokens),
            file=sys.stderr,
        )
        return 0
    try:
        tokens = TokenStore.load(options.tokens) if options.tokens else None
        fleet = Fleet.from_config(options.config, source="api")
        print("servomesh: dashboard at http://%s:%d/" % (options.host, options.port), flush=True)
        serve(fleet, options.host, options.port, tokens, frozenset(options.cors_origin))
    except (TokenFileError, fleet_config.FleetConfigError, FleetError, ValueError) as error:
        print("servomesh serve: %s" % error, file=sys.stderr)
        return 2
    return 0
