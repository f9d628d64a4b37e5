"""fleetctl: create, use and destroy named test fleets of booted Debian hosts (see docs/testfleet.md).

    fleetctl.py create --name demo --hosts repo,tracker,hv01..hv06 [--group cluster_a=hv01..hv03] [--rate-mbit 100]
    fleetctl.py inventory --name demo            # path of the Ansible inventory (--show prints it)
    fleetctl.py exec --name demo hv01 -- systemctl is-system-running
    fleetctl.py list | show --name demo | memory --name demo
    fleetctl.py destroy --name demo              # idempotent
    fleetctl.py base                             # build (or find) the cached base root

``create`` starts a supervisor process that owns the fleet (network namespaces whose names carry
its pid, the nspawn processes) and returns once every host accepts SSH logins; ``destroy`` asks the
supervisor to power the hosts off and remove everything, or cleans up after it when it is gone.
Run it as ``python -m tests.testfleet.fleetctl`` from the repository root or by its path.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

_TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from testfleet import nspawn  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.netns import FleetError  # noqa: E402  pylint: disable=wrong-import-position


def relay(netns_path, host, port):
    """SSH ProxyCommand: relay stdin/stdout to ``host:port`` from inside the namespace ``netns_path``.

    Runs once per SSH connection, so it avoids every import it does not need (argparse included).
    """
    nspawn.setns_net(netns_path)
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.settimeout(None)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "stdin")
    sel.register(sock, selectors.EVENT_READ, "sock")
    while True:
        for key, _events in sel.select():
            if key.data == "stdin":
                data = os.read(0, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sel.unregister(0)
                    sock.shutdown(socket.SHUT_WR)
            else:
                data = sock.recv(65536)
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]


def _relay_main(argv):
    try:
        return relay(argv[0], argv[1], argv[2])
    except (OSError, ValueError, FleetError) as exc:
        sys.stderr.write("fleetctl proxy %s:%s via %s: %s\n" % (argv[1], argv[2], argv[0], exc))
        return 255


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1:3] == ["proxy", "--netns"]:
    sys.exit(_relay_main(sys.argv[3:]))

import argparse  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order
import json  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order
import signal  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order
import subprocess  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order
import time  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order

SCRIPT = os.path.abspath(__file__)
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _say(message):
    sys.stderr.write("fleetctl: %s\n" % message)
    sys.stderr.flush()


def _log_path(name, state_root):
    return os.path.join(state_root, "%s.log" % name)


def _parse_groups(items):
    groups = {}
    for item in items or []:
        if "=" not in item:
            raise FleetError("--group %r: expected NAME=HOST[,HOST...]" % item)
        group, spec = item.split("=", 1)
        groups.setdefault(group.strip(), [])
        for member in nspawn.expand_names(spec):
            if member not in groups[group.strip()]:
                groups[group.strip()].append(member)
    return groups


def _fleet_args(args):
    hosts = nspawn.expand_names(args.hosts)
    groups = _parse_groups(args.group)
    nspawn.validate_names(hosts, groups)
    return hosts, groups


def _require_state(name, state_root):
    state = nspawn.load_state(name, state_root)
    if state is None:
        raise FleetError("no test fleet named %r (fleetctl list)" % name)
    return state


# -- create / supervise ---------------------------------------------------------------------------------

def cmd_create(args):
    """Start the supervisor and wait until the fleet is ready (or failed)."""
    hosts, groups = _fleet_args(args)
    old = nspawn.load_state(args.name, args.state_root)
    if old is not None and nspawn.owner_alive(old):
        raise FleetError("test fleet %s exists (owner pid %s); destroy it first" % (args.name, old.get("owner_pid")))
    if args.foreground:
        return _supervise(args, hosts, groups)
    os.makedirs(args.state_root, mode=0o755, exist_ok=True)
    log_path = _log_path(args.name, args.state_root)
    argv = [sys.executable, SCRIPT, "--state-root", args.state_root, "supervise", "--name", args.name,
            "--hosts", ",".join(hosts)]
    for group, members in groups.items():
        argv += ["--group", "%s=%s" % (group, ",".join(members))]
    if args.rate_mbit:
        argv += ["--rate-mbit", str(args.rate_mbit)]
    if args.subnet:
        argv += ["--subnet", args.subnet]
    if args.boot_timeout:
        argv += ["--boot-timeout", str(args.boot_timeout)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                start_new_session=True, close_fds=True)
    _say("fleet %s: supervisor pid %d, log %s" % (args.name, proc.pid, log_path))
    deadline = time.monotonic() + args.timeout
    offset = 0
    try:
        while True:
            offset = _relay_log(log_path, offset)
            state = nspawn.load_state(args.name, args.state_root)
            if state and state.get("owner_pid") == proc.pid and state.get("status") == "ready":
                _relay_log(log_path, offset)
                print(state["inventory"])
                return 0
            code = proc.poll()
            if code is not None:
                _relay_log(log_path, offset)
                raise FleetError("fleet %s: supervisor exited %d before the fleet was ready (log: %s)" % (
                    args.name, code, log_path))
            if time.monotonic() > deadline:
                raise FleetError("fleet %s: not ready after %d s" % (args.name, args.timeout))
            time.sleep(0.2)
    except BaseException:
        if proc.poll() is None:
            _say("fleet %s: stopping the supervisor" % args.name)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def _relay_log(path, offset):
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    end = data.rfind(b"\n") + 1
    if end:
        sys.stderr.write(data[:end].decode("utf-8", "replace"))
        sys.stderr.flush()
    return offset + end


class _Stop(BaseException):
    """Raised in the supervisor by SIGTERM/SIGINT/SIGHUP."""


def _on_signal(signum, _frame):
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop("signal %d" % signum)


def _supervise(args, hosts, groups):
    """Own the fleet: create it, wait for a signal, destroy it."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    fleet = nspawn.NspawnFleet(args.name, hosts, groups, rate_mbit=args.rate_mbit, subnet=args.subnet,
                               state_root=args.state_root, boot_timeout=args.boot_timeout, supervised=True)
    try:
        fleet.create()
        nspawn._progress_stderr("fleet %s: ready; inventory %s" % (args.name, fleet.inventory_path))  # pylint: disable=protected-access
        reported = set()
        while True:
            time.sleep(1.0)
            for box in fleet.containers:
                if box.name not in reported and not box.running():
                    reported.add(box.name)
                    nspawn._progress_stderr("fleet %s: host %s stopped (nspawn exit %s)" % (  # pylint: disable=protected-access
                        args.name, box.name, box.proc.poll() if box.proc else "?"))
    except _Stop as stop:
        nspawn._progress_stderr("fleet %s: %s, destroying" % (args.name, stop))  # pylint: disable=protected-access
        return 0
    finally:
        fleet.destroy()
        if fleet.status == "destroyed" and not args.foreground:
            nspawn._progress_stderr("fleet %s: destroyed" % args.name)  # pylint: disable=protected-access


def cmd_supervise(args):
    """Internal: the process that owns a fleet (started by ``create``)."""
    hosts, groups = _fleet_args(args)
    return _supervise(args, hosts, groups)


# -- destroy / list / show ------------------------------------------------------------------------------

def cmd_destroy(args):
    """Remove the fleet; succeed when there is none."""
    state = nspawn.load_state(args.name, args.state_root)
    log_path = _log_path(args.name, args.state_root)
    if state is None:
        leftovers = os.path.join(nspawn.DATA_ROOT, args.name)
        if os.path.isdir(leftovers):
            nspawn.remove_tree(leftovers)
        if os.path.exists(log_path):
            os.unlink(log_path)
        _say("no test fleet named %s: nothing to do" % args.name)
        return 0
    pid = state.get("owner_pid")
    if state.get("supervised") and nspawn.owner_alive(state):
        _say("fleet %s: asking supervisor %d to power off and remove the fleet" % (args.name, pid))
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while nspawn.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if nspawn.pid_alive(pid):
            _say("fleet %s: supervisor %d still running after %d s, killing it" % (args.name, pid, args.timeout))
            os.kill(pid, signal.SIGKILL)
    state = nspawn.load_state(args.name, args.state_root)
    if state is not None:
        nspawn.cleanup_from_state(state, progress=_say)
    if os.path.exists(log_path):
        os.unlink(log_path)
    _say("fleet %s: destroyed" % args.name)
    return 0


def cmd_list(args):
    """One line per fleet (or JSON)."""
    states = nspawn.list_states(args.state_root)
    if args.json:
        print(json.dumps([{"name": s.get("name"), "status": s.get("status"), "alive": nspawn.owner_alive(s),
                           "hosts": [h["name"] for h in s.get("hosts", [])], "subnet": s.get("subnet"),
                           "inventory": s.get("inventory")} for s in states], indent=2))
        return 0
    print("%-16s %-9s %-6s %5s  %-16s %s" % ("NAME", "STATUS", "OWNER", "HOSTS", "SUBNET", "INVENTORY"))
    for s in states:
        owner = "alive" if nspawn.owner_alive(s) else "gone"
        row = (s.get("name"), s.get("status"), owner, len(s.get("hosts", [])), s.get("subnet"), s.get("inventory"))
        print("%-16s %-9s %-6s %5d  %-16s %s" % row)
    return 0


def cmd_show(args):
    """The fleet's state as JSON."""
    print(json.dumps(_require_state(args.name, args.state_root), indent=2, sort_keys=True))
    return 0


def cmd_inventory(args):
    """Path of the inventory, or its content with --show."""
    state = _require_state(args.name, args.state_root)
    if state.get("status") != "ready":
        raise FleetError("fleet %s is %s, not ready" % (args.name, state.get("status")))
    if args.show:
        with open(state["inventory"], encoding="utf-8") as handle:
            sys.stdout.write(handle.read())
    else:
        print(state["inventory"])
    return 0


def cmd_memory(args):
    """Memory of each host (Pss of all its processes) and the total, in MiB."""
    state = _require_state(args.name, args.state_root)
    per_host = nspawn.fleet_memory_kib(state)
    for name, kib in per_host.items():
        print("%-20s %8.1f MiB" % (name, kib / 1024.0))
    total = sum(per_host.values())
    print("%-20s %8.1f MiB (%.1f MiB per host)" % ("total", total / 1024.0, total / 1024.0 / max(1, len(per_host))))
    return 0


# -- exec / proxy ------------------------------------------------------------------------------------

def cmd_exec(args):
    """Run a command on one host: by default through the container's namespaces (nsenter), or over SSH."""
    state = _require_state(args.name, args.state_root)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise FleetError("exec: no command given (fleetctl exec --name N HOST -- argv...)")
    hosts = {h["name"]: h for h in state.get("hosts", [])}
    if args.host not in hosts:
        raise FleetError("fleet %s: no host %r (hosts: %s)" % (args.name, args.host, ", ".join(hosts)))
    if args.ssh:
        full = nspawn.ssh_command(state["ssh_config"], args.host, argv)
    else:
        host = hosts[args.host]
        pid = host.get("nspawn_pid")
        if not pid or ("--machine=" + host["machine"]) not in nspawn.pid_cmdline(pid):
            raise FleetError("fleet %s: host %s is not running" % (args.name, args.host))
        init = nspawn.container_init_pid(pid)
        if init is None:
            raise FleetError("fleet %s: host %s has no init process" % (args.name, args.host))
        full = ["nsenter", "--target", str(init), "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd",
                "--", "/usr/bin/env", "-i", "PATH=" + CONTAINER_PATH, "HOME=/root", "LANG=C.UTF-8",
                "TERM=" + os.environ.get("TERM", "dumb")] + argv
    return subprocess.run(full, check=False).returncode


def cmd_proxy(args):
    """Internal: SSH ProxyCommand (see :func:`relay`)."""
    return _relay_main([args.netns, args.host, args.port])


def cmd_base(args):
    """Build (or find) the base root and print its path."""
    if args.path_only:
        print(nspawn.base_root_path(args.cache_dir))
        return 0
    print(nspawn.ensure_base_root(args.cache_dir))
    return 0


# -- command line ---------------------------------------------------------------------------------------

def build_parser():
    """The argparse parser of fleetctl."""
    parser = argparse.ArgumentParser(prog="fleetctl", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--state-root", default=nspawn.STATE_ROOT, help="where fleets keep state (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    def fleet_options(p):
        p.add_argument("--name", required=True, help="fleet name ([a-z0-9_-])")
        p.add_argument("--hosts", required=True, help="host names: repo,tracker,hv01..hv06")
        p.add_argument("--group", action="append", default=[], metavar="GROUP=HOSTS",
                       help="inventory group and its members (ranges allowed); repeatable")
        p.add_argument("--rate-mbit", type=float, default=None, help="shape every host's link to this rate (both ways)")
        p.add_argument("--subnet", default=None, help="a /20 (or larger) of 198.18.0.0/15; default: the first free /20")
        p.add_argument("--boot-timeout", type=float, default=None, help="seconds to wait for sshd on every host")

    p = sub.add_parser("create", help="boot a fleet and print its inventory path")
    fleet_options(p)
    p.add_argument("--timeout", type=int, default=1800, help="overall seconds (first run builds the base root)")
    p.add_argument("--foreground", action="store_true", help="own the fleet in this process until Ctrl-C")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("supervise", help="(internal) the process that owns a fleet; started by create")
    fleet_options(p)
    p.set_defaults(func=cmd_supervise, foreground=False)

    p = sub.add_parser("destroy", help="power off and remove a fleet (idempotent)")
    p.add_argument("--name", required=True)
    p.add_argument("--timeout", type=int, default=90, help="seconds to wait for the supervisor")
    p.set_defaults(func=cmd_destroy)

    p = sub.add_parser("list", help="fleets on this machine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    # The commands about one fleet, named by --name.
    named = {}
    for command, func, text in (("show", cmd_show, "a fleet's state (JSON)"),
                                ("inventory", cmd_inventory, "path of a fleet's Ansible inventory"),
                                ("memory", cmd_memory, "memory used by each host"),
                                ("exec", cmd_exec, "run a command on a host: exec --name N HOST -- argv...")):
        named[command] = sub.add_parser(command, help=text)
        named[command].add_argument("--name", required=True)
        named[command].set_defaults(func=func)
    named["inventory"].add_argument("--show", action="store_true", help="print the inventory instead of its path")
    named["exec"].add_argument("--ssh", action="store_true", help="go through sshd instead of entering the namespaces")
    named["exec"].add_argument("host")
    named["exec"].add_argument("argv", nargs=argparse.REMAINDER)

    p = sub.add_parser("proxy", help="(internal) SSH ProxyCommand into the fleet's controller namespace")
    p.add_argument("--netns", required=True)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("base", help="build (or find) the cached Debian base root")
    p.add_argument("--cache-dir", default=nspawn.CACHE_DIR)
    p.add_argument("--path-only", action="store_true", help="print where it is (or would be), build nothing")
    p.set_defaults(func=cmd_base)
    return parser


def main(argv=None):
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FleetError as exc:
        _say("error: %s" % exc)
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
