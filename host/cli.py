"""The `servomesh` command."""

import argparse
import logging
import sys

from servomesh.host import cli_fleet, cli_serve, console, deploy, flash, logs, provision, sim, upy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servomesh", description="Run servo-driven hardware from Python."
    )
    parser.add_argument(
        "--log-json", action="store_true", help="log as JSON lines on stderr (for collectors)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug records too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "upy",
        help="run the MicroPython unix port with the device tree importable as on a board",
        description="Every argument after `upy` goes to the interpreter unchanged.",
    )
    demo = commands.add_parser(
        "demo",
        help="simulated nodes, the example fleet and the dashboard, until Ctrl-C",
    )
    demo.add_argument("--port", type=int, default=cli_serve.DEFAULT_PORT, help="HTTP port")
    sim.add_arguments(
        commands.add_parser(
            "sim",
            help="run simulated boards (MicroPython unix-port processes) until Ctrl-C",
            description="Prints `<node_id> <url> [<udp url>]` per board, then runs until "
            "Ctrl-C or SIGTERM.",
        )
    )
    cli_fleet.add_arguments(commands)
    cli_serve.add_arguments(commands)
    flash.add_arguments(commands)
    deploy.add_arguments(commands)
    provision.add_arguments(commands)
    console.add_arguments(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["upy"]:  # pass everything after `upy` through, even --help
        try:
            upy.exec_upy(args[1:])
        except upy.InterpreterNotFoundError as error:
            print("servomesh upy: %s" % error, file=sys.stderr)
            return 2
    options = _parser().parse_args(args)
    # Commands that run until stopped say what they do; one-shot commands only warn.
    quiet = logging.INFO if options.command in ("sim", "demo", "serve") else logging.WARNING
    logs.setup(
        json_lines=options.log_json,
        level=logging.DEBUG if options.verbose else quiet,
        prefix="servomesh %s: " % options.command,
    )
    if options.command == "demo":
        from servomesh.host import demo

        return demo.run(options.port)
    if options.command == "sim":
        return sim.run(options)
    if options.command in ("serve", "token"):
        return cli_serve.run(options)
    if options.command == "flash":
        return flash.run(options)
    if options.command == "provision":
        return provision.run(options)
    if options.command == "deploy":
        return deploy.run(options)
    if options.command == "console":
        return console.run(options)
    return cli_fleet.run(options)


if __name__ == "__main__":
    sys.exit(main())
