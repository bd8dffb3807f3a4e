"""The `xmppgw` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from xmppgw import config as configmod
from xmppgw.log import configure as configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xmppgw", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    run.add_argument("--takeover", action="store_true",
                     help="upgrade without dropping a stream: take the listening sockets of "
                     "the gateway running with this config (over its control socket), and "
                     "let it finish its streams (docs/upgrade.md)")
    run.add_argument("--drain", type=drain_seconds, metavar="SECONDS", default=None,
                     help="how long a gateway taken over keeps its streams before it closes "
                     "them (cleartext ones get <system-shutdown/>): with --takeover, the "
                     "old gateway's; also what a successor started by SIGUSR2 is given; "
                     "default 300")
    check = sub.add_parser("check", help="validate a config file; exit 0 if good, 1 if not")
    check.add_argument("-c", "--config", required=True, help="TOML config file")
    check.add_argument("--reach", action="store_true",
                       help="also connect to every real on every port its vservers use")
    check.add_argument("--timeout", type=timeout_seconds, default=None,
                       help="seconds per --reach connect (default: the farm's connect_timeout)")
    ios = sub.add_parser("import-ios", help="print a Cisco IOS `ip slb` config as xmppgw TOML")
    ios.add_argument("file", help="an IOS running-config, or - for standard input")
    ios.add_argument("--domain", action="append", default=[],
                     help="a domain served, for gateway.domains (repeatable)")
    ios.add_argument("--control-socket", default=None,
                     help="gateway.control_socket (default /run/xmppgw/xmppgw.sock)")
    ios.add_argument("-o", "--output", help="write the TOML to this file, not standard output")
    show = sub.add_parser("show", help="show vservers, serverfarms, reals or conns (its streams) of a running gateway")
    show.add_argument("what", choices=["vservers", "serverfarms", "reals", "conns"])
    show.add_argument("detail", nargs="?", choices=["detail"], help="IOS's detail form")
    _gateway_named(show)
    show.add_argument("--json", action="store_true", help="the same data as JSON")
    for what, name_help in (("real", "the real's address as `show reals` prints it"),
                            ("vserver", "the vserver's name")):
        admin = sub.add_parser(what, help=f"take a {what} in or out of service (IOS "
                               "`inservice` / `no inservice`) in a running gateway")
        if what == "real":
            admin.add_argument("farm", help="the serverfarm")
        admin.add_argument("name", help=name_help)
        admin.add_argument("action", choices=["inservice", "no-inservice"])
        admin.add_argument("--drain", type=drain_seconds, metavar="SECONDS",
                           help="with no-inservice: close what is still open after SECONDS")
        _gateway_named(admin)
    reload = sub.add_parser("reload", help="make a running gateway re-read its config "
                            "(as SIGHUP does); a bad file is refused and the old one runs on")
    reload.add_argument("-c", "--config", required=True, help="the running gateway's config")
    zone = sub.add_parser("zone", help="print the SRV records as zone-file text")
    zone.add_argument("-c", "--config", required=True, help="TOML config file with [srv]")
    example = sub.add_parser("example-config", help="print a shipped example config (or the "
                             "systemd unit) to standard output; without NAME, list them")
    example.add_argument("name", nargs="?", metavar="NAME",
                         help="e.g. seed (the seed article's set-up), demo, xmppgw.service")
    reference = sub.add_parser("config-reference", help="print the configuration reference "
                               "(Markdown, from the config model: docs/configuration.md)")
    reference.add_argument("-o", "--output", help="write it to this file")
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run, "check": cmd_check, "show": cmd_show, "zone": cmd_zone}
    commands["import-ios"] = cmd_import_ios
    commands.update(real=cmd_real, vserver=cmd_vserver, reload=cmd_reload)
    commands["example-config"] = cmd_example_config
    commands["config-reference"] = cmd_config_reference
    return commands[args.command](args)


def _version() -> str:
    """The installed distribution's version (package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xmppgw")
    except PackageNotFoundError:
        return "unknown (not installed)"


def cmd_config_reference(args: argparse.Namespace) -> int:
    from xmppgw.config.reference import write

    return write(args.output)


def _gateway_named(command: argparse.ArgumentParser) -> None:
    """`-c CONFIG` (its gateway.control_socket), or `--socket PATH` itself: the way in when
    the config file on disk does not even parse (an edit half done)."""
    named = command.add_mutually_exclusive_group(required=True)
    named.add_argument("-c", "--config", help="the running gateway's config")
    named.add_argument("--socket", metavar="PATH",
                       help="the running gateway's control socket, instead of -c")


def drain_seconds(text: str) -> float:
    """argparse type of every `--drain`: a finite number of seconds, 0 or more. NaN or inf
    would reach the drain timer (NaN closes at once) and the log (invalid JSON)."""
    value = _finite(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text!r}")
    return value + 0.0  # -0 is 0 (the log would say -0.0)


def timeout_seconds(text: str) -> float:
    """argparse type of `check --timeout`: a finite number of seconds, more than 0."""
    value = _finite(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text!r}")
    return value


def _finite(text: str) -> float | None:
    import math

    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    reals = sum(len(f.reals) for f in config.serverfarms)
    print(f"{args.config}: OK: {len(config.vservers)} vservers, "
          f"{len(config.serverfarms)} serverfarms, {reals} reals")
    return _check_reach(config, args.timeout) if args.reach else 0


def _check_reach(config: configmod.Config, timeout: float | None) -> int:
    """`check --reach`: one TCP connect per (farm, real, port) that traffic would take.

    The seed's warning: a vserver whose service the reals do not run sends every
    connection to a closed port, and faildetect then marks the whole farm FAILED. This
    finds that before the gateway does. A real or vserver out of service is still tried
    (the spare should be ready), but its failure does not change the exit status.
    """
    import asyncio

    targets, vserver_ports = _reach_plan(config)
    timeouts = [timeout or config.farm(t[0]).connect_timeout for t in targets]
    results = asyncio.run(_reach_all(targets, timeouts))
    failed: list[ReachTarget] = []
    for target, error in zip(targets, results):
        if error is None:
            continue
        farm, host, port, vservers, counted = target
        note = "" if counted else " (not in service: not counted)"
        if counted:
            failed.append(target)
        print(f"reach: serverfarm {farm}, real {host}, port {port}: {error} "
              f"(vserver {', '.join(vservers)}){note}", file=sys.stderr)
    print(f"{config.path}: reach: {_reach_summary(targets, results)}")
    if any(t[:3] in vserver_ports for t in failed):
        print("reach: a vserver whose port its reals do not serve has every connection fail, "
              "and faildetect then marks the whole farm FAILED: start the service on the "
              "reals, or remove the vserver", file=sys.stderr)
    if any(t[:3] not in vserver_ports for t in failed):
        print("reach: a real that does not answer on the port it gives (its address's port "
              "or directtls_port) is marked FAILED by faildetect: start the service there, "
              "or correct the port", file=sys.stderr)
    return 1 if failed else 0


def _reach_summary(targets: list[ReachTarget], results: list[str | None]) -> str:
    """`2 of 4 (serverfarm, real, port) answered`, over what counts; what is out of service
    (tried, not counted) is said apart, so the numbers agree with the exit status."""
    counted = [r for t, r in zip(targets, results) if t[4]]
    spare = [r for t, r in zip(targets, results) if not t[4]]
    text = (f"{counted.count(None)} of {len(counted)} (serverfarm, real, port) answered")
    if spare:
        text += f"; not in service (not counted): {spare.count(None)} of {len(spare)} answered"
    return text


ReachTarget = tuple[str, str, int, tuple[str, ...], bool]  # farm, host, port, vservers, counted


def reach_targets(config: configmod.Config) -> list[ReachTarget]:
    """Every (farm, real, port) a vserver can send a connection to, with the vservers that
    would, and whether it counts (vserver and real both in service), in config order."""
    return _reach_plan(config)[0]


def _reach_plan(config: configmod.Config) -> tuple[list[ReachTarget], set[tuple[str, str, int]]]:
    """`reach_targets`, and which of them take their port from the vserver (a real with no
    port of its own): only there is "the vserver's port is not served" the diagnosis."""
    seen: dict[tuple[str, str, int], tuple[list[str], bool]] = {}
    vserver_ports: set[tuple[str, str, int]] = set()
    for vserver in config.vservers:
        farms = [vserver.serverfarm, *(route.serverfarm for route in vserver.routes)]
        for name in dict.fromkeys(f for f in farms if f is not None):
            farm = config.farm(name)
            for real in farm.reals:
                endpoints = [real.address.with_port(vserver.virtual.port)]
                if real.address.port is None:
                    vserver_ports.add((name, *endpoints[0]))
                if vserver.mode == "both":  # its ClientHellos go to the direct-TLS port
                    endpoints.append(farm.directtls_endpoint(real))
                for host, port in endpoints:
                    names, counted = seen.get((name, host, port), ([], False))
                    names.append(vserver.name)
                    seen[(name, host, port)] = (names, counted or (vserver.inservice
                                                                   and real.inservice))
    targets = [(farm, host, port, tuple(dict.fromkeys(names)), counted)
               for (farm, host, port), (names, counted) in seen.items()]
    return targets, vserver_ports


async def _reach_all(targets: list[ReachTarget], timeouts: list[float]) -> list[str | None]:
    """All connects at once: the whole check takes one timeout, not one per real."""
    import asyncio

    return list(await asyncio.gather(*(_reach_one(t[1], t[2], limit)
                                       for t, limit in zip(targets, timeouts))))


async def _reach_one(host: str, port: int, limit: float) -> str | None:
    """None if a TCP handshake completes within `limit` seconds, else why not."""
    import asyncio
    import os

    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    except TimeoutError:
        return f"no answer within {limit:g} s"
    except OSError as exc:  # asyncio words it "Connect call failed (...)": say what errno says
        return os.strerror(exc.errno) if exc.errno else str(exc)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


def cmd_import_ios(args: argparse.Namespace) -> int:
    """Print an IOS running-config's `ip slb` blocks as xmppgw TOML; report, on stderr,
    every command that was not imported, and refuse output that would not load."""
    from pathlib import Path

    from xmppgw.ios import DEFAULT_CONTROL_SOCKET, import_ios

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(
            encoding="utf-8", errors="replace")
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    result = import_ios(text, domains=args.domain,
                        control_socket=args.control_socket or DEFAULT_CONTROL_SOCKET)
    for finding in result.findings:
        print(finding, file=sys.stderr)
    print(result.summary(args.file), file=sys.stderr)
    if not result.blocks:
        print(f"{args.file}: no `ip slb serverfarm` or `ip slb vserver` block found",
              file=sys.stderr)
        return 1
    try:
        configmod.loads(result.toml, args.output or "<imported>")
    except configmod.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as out:
                out.write(result.toml)
        except OSError as exc:
            print(f"xmppgw: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        print(result.toml, end="")
    return 0


def _control(config_path: str | None, payload: dict[str, object],
             strict: bool = False, socket_path: str | None = None) -> dict | None:
    """One request to the running gateway named by a config file, or by its control socket
    `socket_path` itself (`--socket`); None (said why) if it cannot be made or the gateway
    refused it.

    Only `gateway.control_socket` is read. Unless `strict` (reload: the file is the new
    config), a file with problems elsewhere still names the socket: an operator half-way
    through an edit can look at the gateway and take a real out (a warning says so)."""
    from xmppgw.control.server import request

    if socket_path is not None or config_path is None:  # argparse: one of the two
        path: str | None = socket_path
    else:
        path = control_socket_of(config_path) if not strict else _strict_socket(config_path)
    if path is None:
        return None
    if not path:
        print(f"{config_path}: gateway.control_socket is not set", file=sys.stderr)
        return None
    try:
        reply = request(path, payload, timeout=30.0)
    except OSError as exc:
        # A timeout comes after the connect: the gateway is there but does not answer.
        what = "no answer from" if isinstance(exc, TimeoutError) else "cannot reach"
        print(f"xmppgw: {what} the gateway at {path}: {exc.strerror or exc}", file=sys.stderr)
        return None
    if not reply.get("ok"):
        print(f"xmppgw: {reply.get('error')}", file=sys.stderr)
        return None
    return reply


def _strict_socket(config_path: str) -> str | None:
    config = _load(config_path)
    return None if config is None else config.gateway.control_socket or ""


def control_socket_of(config_path: str) -> str | None:
    """The `gateway.control_socket` of a config file ("" if not set), even when the file has
    problems elsewhere: then one warning line on stderr says how many. None (the problems
    printed) if the file cannot be read, is not TOML, or that value itself is bad."""
    import tomllib

    from xmppgw.config.resolver import decode

    try:
        config = configmod.load(config_path)
    except configmod.ConfigError as exc:
        problems = exc.problems
    else:
        return config.gateway.control_socket or ""
    try:
        with open(config_path, "rb") as f:
            data = tomllib.loads(decode(f.read()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = None
    gateway = data.get("gateway", {}) if data is not None else None
    value = gateway.get("control_socket", "") if isinstance(gateway, dict) else None
    if not isinstance(value, str):
        for problem in problems:
            print(problem, file=sys.stderr)
        return None
    print(f"xmppgw: warning: {config_path} has {len(problems)} "
          f"problem{'s' if len(problems) != 1 else ''} (`xmppgw check -c {config_path}` "
          "lists them); only its gateway.control_socket is used here", file=sys.stderr)
    return value


def cmd_real(args: argparse.Namespace) -> int:
    return _admin(args, {"command": "real", "farm": args.farm, "real": args.name})


def cmd_vserver(args: argparse.Namespace) -> int:
    return _admin(args, {"command": "vserver", "vserver": args.name})


def _admin(args: argparse.Namespace, payload: dict[str, object]) -> int:
    inservice = args.action == "inservice"
    if args.drain is not None and inservice:  # a usage error: argparse's exit status
        print("xmppgw: --drain goes with no-inservice", file=sys.stderr)
        return 2
    reply = _control(args.config, {**payload, "inservice": inservice, "drain": args.drain},
                     socket_path=args.socket)
    if reply is None:
        return 1
    data = reply["data"]
    if "real" in data:
        print(f"serverfarm {data['farm']}, real {data['real']}: {data['state']}, "
              f"{data['conns']} conns")
    else:
        print(f"vserver {data['vserver']}: {'OPERATIONAL' if data['inservice'] else 'OUTOFSERVICE'}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    reply = _control(args.config, {"command": "reload"}, strict=True)
    if reply is None:
        print("xmppgw: not reloaded: the running gateway keeps its config", file=sys.stderr)
        return 1
    data = reply["data"]
    changes = [f"{key.replace('_', ' ')}: {', '.join(value)}"
               for key, value in data.items() if value]
    # The gateway re-reads the file it was started with (after a takeover, the new
    # process's); the file given here only named the control socket to ask.
    read = reply.get("config", args.config)
    print(f"{read}: reloaded" + ("; " + "; ".join(changes) if changes else
                                 " (no real or vserver added or removed)"))
    if os.path.realpath(read) != os.path.realpath(args.config):
        print(f"xmppgw: the running gateway re-read its own file {read}, not {args.config}",
              file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from xmppgw.control import show
    from xmppgw.control.snapshot import GatewaySnapshot

    reply = _control(args.config, {"command": "show", "conns": args.what == "conns"},
                     socket_path=args.socket)
    if reply is None:
        return 1
    data = GatewaySnapshot.from_json(reply["data"])
    if args.json:
        if args.what == "reals":  # the snapshot holds reals per farm; show them as a list
            out = [{"serverfarm": farm.name, **real.to_json()} for farm, real in data.reals()]
        else:
            out = data.to_json().get(args.what, [])
        print(json.dumps(out, indent=2))
    elif args.what == "serverfarms":
        print(show.serverfarms_detail(data) if args.detail else show.serverfarms(data), end="")
    elif args.what == "reals":
        print(show.reals(data, detail=bool(args.detail)), end="")
    elif args.what == "conns":
        print(show.conns(data), end="")
    else:
        print(show.vservers(data), end="")
    return 0


def cmd_zone(args: argparse.Namespace) -> int:
    """The records the gateway publishes: from the running gateway if its control socket
    answers (live health), else from the config (every vserver and real in service)."""
    import time

    from xmppgw.control.server import request
    from xmppgw.dns.records import Health, build

    config = _load(args.config)
    if config is None:
        return 1
    if config.srv is None:
        print(f"{args.config}: no [srv] section: the gateway publishes no records",
              file=sys.stderr)
        return 1
    path = config.gateway.control_socket
    why = "gateway.control_socket is not set"
    if path:
        try:
            reply = request(path, {"command": "zone"})
        except (OSError, ValueError) as exc:  # not running, or no whole reply
            why = f"no gateway answered at {path}: {getattr(exc, 'strerror', None) or exc}"
        else:
            if reply.get("ok"):
                print(reply["data"], end="")
                return 0
            why = f"the gateway at {path} said: {reply.get('error')}"
    published = build(config, Health.from_config(config), int(time.time()))
    print(published.to_zone_text(f"from the config ({why}): every vserver and real in "
                                 "service"), end="")
    return 0


def cmd_example_config(args: argparse.Namespace) -> int:
    """The examples are package data: `xmppgw/examples` is the repository's `conf/` (a
    symlink in the source tree, real files in the wheel)."""
    from importlib.resources import files

    examples = files("xmppgw") / "examples"
    shipped = sorted((entry.name for entry in examples.iterdir()
                      if entry.name.endswith((".toml", ".service"))),
                     key=lambda name: name.removesuffix(".toml"))
    if args.name is None:
        for name in shipped:
            print(name.removesuffix(".toml"))
        return 0
    name = args.name if args.name in shipped else f"{args.name}.toml"
    if name not in shipped:
        print(f"xmppgw: no example config named {args.name!r} (there are: "
              f"{', '.join(n.removesuffix('.toml') for n in shipped)})", file=sys.stderr)
        return 1
    print((examples / name).read_text(encoding="utf-8"), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from xmppgw.net import workers

    config = _load(args.config)
    if config is None:
        return 1
    problem = control_socket_problem(config)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    from xmppgw.net.takeover import DEFAULT_DRAIN

    drain = DEFAULT_DRAIN if args.drain is None else args.drain
    if args.takeover and not config.gateway.control_socket:
        print(f"{args.config}: --takeover needs gateway.control_socket (the running gateway "
              "is asked for its sockets there)", file=sys.stderr)
        return 1
    log = configure_logging(config.gateway.log_format)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    return workers.run(config, log, loop_factory, args.takeover, drain)


def control_socket_problem(config: configmod.Config) -> str | None:
    """Why the control socket cannot be created, said before anything starts: its directory
    is missing and cannot be made (a parent is a file, or this user may not write there), or
    it exists and this user may not write in it. None if it looks fine (or is not set).

    The gateway makes a missing directory itself (mode 0700), as root can under /run; run
    as a service user, it needs the directory made for it (systemd `RuntimeDirectory=`)."""
    import os
    from pathlib import Path

    path = config.gateway.control_socket
    if not path:
        return None
    where = f"{config.path}: gateway.control_socket = {path!r}"
    directory = Path(path).absolute().parent
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    fix = (f"create it (e.g. `install -d -m 0750 -o {_user()} {directory}`, or "
           f"`RuntimeDirectory={directory.name}` in the systemd unit), or set "
           "gateway.control_socket to a path in a directory this user can write")
    if ancestor != directory:
        if not ancestor.is_dir():
            return (f"{where}: the directory {directory} cannot be created: {ancestor} is not "
                    "a directory; set gateway.control_socket to another path")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return (f"{where}: the directory {directory} does not exist, and this user "
                    f"({_user()}) may not create it in {ancestor}: {fix}")
        return None
    if not directory.is_dir():
        return (f"{where}: {directory} is not a directory; set gateway.control_socket to "
                "another path")
    if not os.access(directory, os.W_OK | os.X_OK):
        return (f"{where}: this user ({_user()}) may not create the socket in {directory}: "
                f"give it write access there (e.g. `chown {_user()} {directory}`), or set "
                "gateway.control_socket to a path in a directory this user can write")
    return None


def _user() -> str:
    import os
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
