"""The `xmppgw` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from xmppgw import config as configmod
from xmppgw.log import configure as configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xmppgw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    check = sub.add_parser("check", help="validate a config file; exit 0 if good, 1 if not")
    check.add_argument("-c", "--config", required=True, help="TOML config file")
    show = sub.add_parser("show", help="show vservers, serverfarms or reals of a running gateway")
    show.add_argument("what", choices=["vservers", "serverfarms", "reals"])
    show.add_argument("detail", nargs="?", choices=["detail"], help="IOS's detail form")
    show.add_argument("-c", "--config", required=True, help="the running gateway's config")
    show.add_argument("--json", action="store_true", help="the same data as JSON")
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run, "check": cmd_check, "show": cmd_show}
    return commands[args.command](args)


def _load(path: str) -> configmod.Config | None:
    try:
        return configmod.load(path)
    except configmod.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    reals = sum(len(f.reals) for f in config.serverfarms)
    print(f"{args.config}: OK: {len(config.vservers)} vservers, "
          f"{len(config.serverfarms)} serverfarms, {reals} reals")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from xmppgw.control import show
    from xmppgw.control.server import request

    config = _load(args.config)
    if config is None:
        return 1
    path = config.gateway.control_socket
    if not path:
        print(f"{args.config}: gateway.control_socket is not set", file=sys.stderr)
        return 1
    try:
        reply = request(path, {"command": "show"})
    except OSError as exc:
        print(f"xmppgw: cannot reach the gateway at {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"xmppgw: {reply.get('error')}", file=sys.stderr)
        return 1
    data = reply["data"]
    if args.json:
        if args.what == "reals":  # the snapshot holds reals per farm; show them as a list
            data["reals"] = [{"serverfarm": farm["name"], **real}
                             for farm in data["serverfarms"] for real in farm["reals"]]
        print(json.dumps(data[args.what], indent=2))
    elif args.what == "serverfarms":
        print(show.serverfarms_detail(data) if args.detail else show.serverfarms(data), end="")
    elif args.what == "reals":
        print(show.reals(data, detail=bool(args.detail)), end="")
    else:
        print(show.vservers(data), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from xmppgw.net import workers

    config = _load(args.config)
    if config is None:
        return 1
    log = configure_logging(config.gateway.log_format)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    return workers.run(config, log, loop_factory)
