"""Light hosts: hundreds of SSH-reachable hypervisors on one machine, each with its own engine.

A light host is what a hypervisor looks like to Ansible and to the swarm, without a booted systemd:

* its own network namespace and address, on the bridge of a booted test fleet (:mod:`testfleet.nspawn`,
  whose repository and tracker hosts it reaches by name) or on a switch of its own;
* its own filesystem view: ``systemd-nspawn`` **without** ``--boot`` over the cached Debian base root,
  with a private overlay upper directory (``/etc``, ``/var/lib/vmic``, ``/var/lib/vmic-engine``, the
  CA directory... everything a host writes lands there) and ``/run/vmic-engine`` bound from the host's
  directory on the machine, so the harness reads the engine's socket from outside;
* its own real ``sshd`` (Ansible connects over SSH with the fleet's key; one host key shared by all
  light hosts of a fleet) and its own engine process.

The engine is started exactly as the role ``vmic.fleet.engine`` would have systemd start it: the
harness renders the role's config, unit and file list on the controller (``tests/scale/render_engine.yml``,
the role's own variables and template) and runs the unit's ``ExecStart`` with its ``Environment``,
restarting it like ``Restart=on-failure``. The payload of each container is a small ``/bin/sh``
script (``--as-pid2``, nspawn's stub init reaps) that starts the engine and then execs ``sshd -D``.

What the hypervisor role leaves on a host (store, archive and list directories, trust anchors, the
site's TLS CA, the engine's code, config and service) is written by the harness before the host
starts: ``files`` and ``dirs`` of :class:`LightFleet`, plus the engine. ``site.yml`` does not run on
light hosts (no systemd to manage units); ``rollout.yml`` and ``status.yml`` run unchanged.

Hosts start in parallel batches; the fleet's state (``/run/vmic-lighthost/<name>/state.json``) lists
every namespace, nspawn process and cgroup, so :func:`cleanup_from_state` removes a fleet whose
owner died (a new fleet of the same name does it first), and :class:`LightFleet` cleans up on exit.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time

_TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from testfleet import netns  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.netns import Fleet, FleetError, delete_namespace, list_namespaces, require_root  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.nspawn import (  # noqa: E402  pylint: disable=wrong-import-position
    DATA_ROOT, NSPAWN, FleetArtefacts, ensure_base_root, generate_ed25519, owner_alive, pid_alive, start_nspawn, tail_file,
    pid_cmdline, read_json, remove_cgroups, remove_tree, ssh_banner, write_text_atomic, _start_time,
)

STATE_ROOT = "/run/vmic-lighthost"
NETNS_PREFIX = "vmlh"
HOST_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
FLEET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
INIT_PATH = "/usr/local/sbin/vmic-lighthost-init"
MODULE_UTILS_IMPORT_RE = re.compile(r"^\s*from\s+ansible_collections\.vmic\.fleet\.plugins\.module_utils((?:\.[A-Za-z_]\w*)*)\s+import\s+([\w, ()]+)",
                                    re.M)


def _say(message):
    sys.stderr.write("[%s] lighthost: %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


# -- the engine as the role installs it -------------------------------------------------------------

class EngineLayout:
    """What ``tests/scale/render_engine.yml`` rendered from the role vmic.fleet.engine (see :func:`render_engine`)."""

    def __init__(self, render_dir):
        self.render_dir = render_dir
        layout = read_json(os.path.join(render_dir, "layout.json"))
        self.install_dir = layout["install_dir"]
        self.module_utils_dir = layout["module_utils_dir"]
        self.module_utils_files = list(layout["module_utils_files"])
        self.package_dirs = list(layout["package_dirs"])
        self.config_file = layout["config_file"]
        self.socket = layout["socket"]
        self.state_dir = layout["state_dir"]
        with open(os.path.join(render_dir, "engine.json"), encoding="utf-8") as handle:
            self.config_text = handle.read()
        with open(os.path.join(render_dir, "vmic-engine.service"), encoding="utf-8") as handle:
            self.unit = parse_unit(handle.read())
        if not self.unit.get("ExecStart"):
            raise FleetError("engine unit rendered in %s has no ExecStart" % render_dir)
        self.argv = shlex.split(self.unit["ExecStart"][-1])
        self.environment = {}
        for item in self.unit.get("Environment", []):
            for word in shlex.split(item):
                key, _sep, value = word.partition("=")
                self.environment[key] = value
        self.restart = (self.unit.get("Restart") or ["no"])[-1]
        self.restart_sec = float((self.unit.get("RestartSec") or ["0.1"])[-1])
        self.runtime_dirs = ["/run/" + d for d in _words(self.unit.get("RuntimeDirectory"))]
        self.state_dirs = ["/var/lib/" + d for d in _words(self.unit.get("StateDirectory"))]

    def init_script(self, sshd_args=()):
        """The payload of a light host: directories systemd would make, the engine (restarted like the unit says), sshd."""
        env = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in sorted(self.environment.items()))
        engine = "%s %s >>/var/log/vmic-engine.log 2>&1" % (env, shlex.join(self.argv))
        lines = ["#!/bin/sh",
                 "# vmic.fleet light host (tests/testfleet/lighthost.py): what systemd starts on a hypervisor.",
                 "mkdir -p /run/sshd",
                 "chmod 0755 /run/sshd"]
        for path in self.runtime_dirs + self.state_dirs:
            lines.append("mkdir -p -m 0700 %s" % shlex.quote(path))
        if self.restart in ("on-failure", "always", "on-abnormal"):
            lines.append("( while :; do %s; rc=$?; [ \"$rc\" -eq 0 ] && [ %s != always ] && break; sleep %s; done ) &" % (
                engine, shlex.quote(self.restart), _fmt_sec(self.restart_sec)))
        else:
            lines.append("%s &" % engine)
        lines.append("exec /usr/sbin/sshd -D -e %s" % shlex.join(list(sshd_args)))
        return "\n".join(lines) + "\n"


def _fmt_sec(value):
    return ("%g" % value) if value > 0 else "0.1"


def _words(items):
    out = []
    for item in items or []:
        out.extend(item.split())
    return out


def parse_unit(text):
    """{key: [values]} of a systemd unit file's assignments (sections merged, later values appended)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def render_engine(render_dir, repo_root, engine_vars=None, env=None, ansible_playbook="ansible-playbook"):
    """Run ``tests/scale/render_engine.yml`` (the role's defaults, vars and template) into ``render_dir``."""
    os.makedirs(render_dir, exist_ok=True)
    argv = [ansible_playbook, os.path.join(repo_root, "tests", "scale", "render_engine.yml"),
            "-e", "lighthost_render_dir=%s" % render_dir]
    if engine_vars:
        path = os.path.join(render_dir, "engine_vars.json")
        write_text_atomic(path, json.dumps(engine_vars))
        argv += ["-e", "@" + path]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300, check=False)
    if proc.returncode != 0:
        raise FleetError("rendering the engine role failed (exit %d):\n%s" % (proc.returncode, (proc.stdout + proc.stderr)[-3000:]))
    return EngineLayout(render_dir)


def module_utils_closure(src_dir, files):
    """``files`` (paths relative to plugins/module_utils) plus every module_utils file they import, transitively.

    Returns (all files, the ones ``files`` lacks). The role installs ``files``; a file it lacks would
    make the engine fail at import on a real host too, so the caller reports it.
    """
    wanted = list(files)
    seen = set(wanted)
    queue = list(wanted)
    while queue:
        rel = queue.pop()
        path = os.path.join(src_dir, rel)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        for match in MODULE_UTILS_IMPORT_RE.finditer(text):
            package = [p for p in match.group(1).split(".") if p]
            names = [n.strip() for n in match.group(2).replace("(", " ").replace(")", " ").split(",") if n.strip()]
            candidates = [package + [n.split()[0]] for n in names] + ([package] if package else [])
            for parts in candidates:
                for cand in (os.path.join(*parts) + ".py", os.path.join(*(parts + ["__init__.py"]))):
                    if os.path.isfile(os.path.join(src_dir, cand)):
                        parent = os.path.dirname(cand)
                        extra = [cand] + ([os.path.join(parent, "__init__.py")] if parent else [])
                        for item in extra:
                            if item not in seen and os.path.isfile(os.path.join(src_dir, item)):
                                seen.add(item)
                                wanted.append(item)
                                queue.append(item)
                        break
    missing = [f for f in wanted if f not in files]
    return wanted, missing


def install_engine_code(layout, src_dir, dest_root):
    """Copy the engine's Python files as the role does, into ``dest_root`` (bound read-only at the install dir).

    Returns the files the role's list lacks (they are copied too, so the run can go on; see module_utils_closure).
    """
    files, missing = module_utils_closure(src_dir, layout.module_utils_files)
    if os.path.isdir(dest_root):
        shutil.rmtree(dest_root)
    rel_mu = os.path.relpath(layout.module_utils_dir, layout.install_dir)
    for pkg in layout.package_dirs:
        os.makedirs(os.path.join(dest_root, pkg), exist_ok=True)
        write_text_atomic(os.path.join(dest_root, pkg, "__init__.py"), "")
    for rel in files:
        dest = os.path.join(dest_root, rel_mu, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(src_dir, rel), dest)
    return missing


# -- network ------------------------------------------------------------------------------------------

class _Network(Fleet):
    """Host namespaces of the light fleet, on an existing switch namespace (or a new one), numbered from ``first_octet``."""

    def __init__(self, subnet, switch_ns=None, first_octet=2):
        super().__init__(0, prefix=NETNS_PREFIX, subnet=subnet)
        self.first_octet = first_octet
        self.external_switch = switch_ns
        if switch_ns is not None:
            self.switch_ns = switch_ns
            self._set_up = True
            atexit.register(self.teardown)

    def add_host(self, name=None, rate_mbit=None, delay_ms=0, loss_pct=0.0, ingress_rate_mbit=None):
        """A host namespace on the switch, its switch-side link named ``lh<i>`` (a booted fleet's are ``v<i>``); unshaped."""
        if rate_mbit or delay_ms or loss_pct or ingress_rate_mbit:
            raise FleetError("light fleet: links are not shaped")
        index = len(self.hosts)
        ns = "%s-%s" % (self.prefix, name)
        host = netns.Host(self, name, index, ns, self.address(index), self.subnet.prefixlen)
        host.switch_ifname = "lh%d" % index
        self._add_ns(ns)
        what = "light host %s" % name
        sw = [netns.IP, "-n", self.switch_ns]
        hn = [netns.IP, "-n", ns]
        for argv in (sw + ["link", "add", host.switch_ifname, "type", "veth", "peer", "name", host.ifname, "netns", ns],
                     sw + ["link", "set", host.switch_ifname, "master", "br0"], sw + ["link", "set", host.switch_ifname, "up"],
                     hn + ["link", "set", "lo", "up"], hn + ["addr", "add", "%s/%d" % (host.addr, host.prefixlen), "dev", host.ifname],
                     hn + ["link", "set", host.ifname, "up"]):
            netns._check(argv, what)  # pylint: disable=protected-access
        self.hosts.append(host)
        self.by_name[name] = host
        return host

    def address(self, index):
        offset = 256 * (self.first_octet + index // netns.HOSTS_PER_OCTET) + 1 + index % netns.HOSTS_PER_OCTET
        if offset >= self.subnet.num_addresses - 1:
            raise FleetError("light fleet: subnet %s has no room for host #%d" % (self.subnet, index))
        return str(self.subnet.network_address + offset)


# -- the fleet -------------------------------------------------------------------------------------------

class LightFleet(FleetArtefacts):
    """``hosts`` light hosts (names) with the engine of ``layout``; a context manager.

    ``attach``: the state dict of a booted test fleet (``fleetctl show``) whose bridge, subnet and
    controller namespace the light hosts join; without it the light fleet makes its own switch and
    controller namespace in ``subnet``. ``files``: {absolute path on every host: (bytes, mode)};
    ``dirs``: directories made on every host (0755); ``hosts_text``: lines for every host's /etc/hosts
    (the names it must resolve: repository, tracker). ``batch``: hosts started at once.
    """

    what = "light fleet"

    def __init__(self, name, hosts, layout, engine_src, attach=None, subnet="198.19.0.0/20", files=None, dirs=(),
                 hosts_text="", batch=25, state_root=STATE_ROOT, data_root=DATA_ROOT, progress=_say, ready_timeout=180.0):
        if not FLEET_NAME_RE.match(name or ""):
            raise FleetError("light fleet: bad name %r" % name)
        for host in hosts:
            if not HOST_NAME_RE.match(host) or host in ("sw", "ctl"):
                raise FleetError("light fleet %s: bad host name %r" % (name, host))
        if len(set(hosts)) != len(hosts):
            raise FleetError("light fleet %s: a host name is given twice" % name)
        super().__init__(name, os.path.join(state_root, name), os.path.join(data_root, "light-" + name), progress)
        self.host_names = list(hosts)
        self.layout = layout
        self.engine_src = engine_src
        self.attach = attach
        self.subnet = attach["subnet"] if attach else subnet
        self.files = dict(files or {})
        self.dirs = list(dirs)
        self.hosts_text = hosts_text
        self.batch = max(1, int(batch))
        self.ready_timeout = ready_timeout
        self.net = None
        self.ctl = None
        self.ctl_netns_path = None
        self.hosts = []
        self.missing_engine_files = []
        self.sysctl = {}
        self._created = False

    # -- life cycle (paths of the artefacts and the context manager: nspawn.FleetArtefacts) ----------

    def create(self, groups=None):
        """Clean up a dead earlier run, make network and host directories, start every host in batches."""
        require_root()
        if shutil.which(NSPAWN) is None:
            raise FleetError("light fleet %s: %s is not installed (package systemd-container)" % (self.name, NSPAWN))
        started = time.monotonic()
        base = ensure_base_root(progress=self.progress)
        os.makedirs(os.path.dirname(self.state_dir), mode=0o755, exist_ok=True)
        with open(os.path.join(os.path.dirname(self.state_dir), ".lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cleanup_stale(os.path.dirname(self.state_dir), progress=self.progress)
            old = load_state(self.state_path)
            if old is not None:
                if owner_alive(old):
                    raise FleetError("light fleet %s exists (owner pid %s)" % (self.name, old.get("owner_pid")))
                cleanup_from_state(old, progress=self.progress)
            for path in (self.data_dir, self.state_dir):
                if os.path.isdir(path):
                    remove_tree(path)
            os.makedirs(self.state_dir, mode=0o700)
            os.makedirs(os.path.join(self.state_dir, "console"), mode=0o700)
            os.makedirs(self.data_dir, mode=0o700)
            self._created = True
            atexit.register(self.destroy)
            self._write_state("starting")
        try:
            self._create(base, groups)
        except BaseException:
            self.destroy()
            raise
        self.timings["create_s"] = round(time.monotonic() - started, 2)
        self._write_state("ready")
        return self

    def _create(self, base, groups):
        t0 = time.monotonic()
        if self.attach:
            self.net = _Network(self.subnet, switch_ns=self.attach["switch_ns"])
            self.ctl_netns_path = self.attach["controller"]["netns_path"]
        else:
            self.net = _Network(self.subnet, first_octet=1)
            self.net.setup()
        netns.cleanup_stale(NETNS_PREFIX)
        self.sysctl = raise_neighbour_limits(len(self.host_names))
        self._write_state("starting")
        for path, (old, new) in sorted(self.sysctl.items()):
            self.progress("%s raised from %d to %d for %d hosts (restored when the fleet is removed)" % (
                path.replace("/proc/sys/", "").replace("/", "."), old, new, len(self.host_names)))
        shared = os.path.join(self.data_dir, "shared")
        os.makedirs(shared)
        engine_code = os.path.join(shared, "engine-code")
        self.missing_engine_files = install_engine_code(self.layout, self.engine_src, engine_code)
        if self.missing_engine_files:
            self.progress("WARNING: the role vmic.fleet.engine does not install %s, which the engine imports "
                          "(copied here so the run goes on; on a real host the engine would not start)"
                          % ", ".join(self.missing_engine_files))
        init = os.path.join(shared, "init.sh")
        write_text_atomic(init, self.layout.init_script(), 0o755)
        client_pub = generate_ed25519(self.key_path, "vmic-lighthost-%s" % self.name)
        host_key = os.path.join(shared, "ssh_host_ed25519_key")
        host_pub = generate_ed25519(host_key, "root@vmic-lighthost-%s" % self.name)
        self.timings["prepare_s"] = round(time.monotonic() - t0, 2)
        for name in self.host_names:
            self.hosts.append(LightHost(self, name, self.net.add_host(name)))
            self.by_name[name] = self.hosts[-1]
        if not self.attach:
            self.ctl_netns_path = self.net.add_host("ctl").netns_path
        self._write_state("starting")
        self.timings["network_s"] = round(time.monotonic() - t0, 2)
        t1 = time.monotonic()
        for first in range(0, len(self.hosts), self.batch):
            batch = self.hosts[first:first + self.batch]
            for host in batch:
                host.prepare(client_pub, self.hosts_text)
                host.start(base, shared)
            self._write_state("starting")
            self._wait_ready(batch)
            self.progress("light fleet %s: %d/%d hosts up after %.1f s" % (
                self.name, first + len(batch), len(self.hosts), time.monotonic() - t1))
        self.timings["start_s"] = round(time.monotonic() - t1, 2)
        self._write_ssh_files(host_pub)
        self._write_inventory(groups or {})
        self.progress("light fleet %s: %d hosts answer SSH, engines up, after %.1f s" % (
            self.name, len(self.hosts), time.monotonic() - t0))

    def _wait_ready(self, hosts):
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(hosts)
        ctl = self.ctl_netns_path
        while waiting:
            for host in list(waiting):
                if not host.running():
                    raise FleetError("light host %s: systemd-nspawn exited %s at start; console:\n%s" % (
                        host.name, host.proc.poll(), host.console_tail()))
                if os.path.exists(host.engine_socket_outside) and (ctl is None or ssh_banner(ctl, host.addr, timeout=1.0)):
                    host.ready = True
                    waiting.remove(host)
            if not waiting:
                return
            if time.monotonic() > deadline:
                host = waiting[0]
                raise FleetError("light host %s (%s): sshd or engine not up within %.0f s; console:\n%s\nengine log:\n%s" % (
                    host.name, host.addr, self.ready_timeout, host.console_tail(), host.engine_log_tail()))
            time.sleep(0.2)

    def destroy(self):
        """Stop every host, delete namespaces, cgroups, host directories and state. Idempotent."""
        if self._destroyed or not self._created:
            return
        self._destroyed = True
        started = time.monotonic()
        cleanup_from_state(self._state("stopping"), progress=None)
        if self.net is not None:
            self.net.teardown()
        try:
            atexit.unregister(self.destroy)
        except Exception:  # pylint: disable=broad-except
            pass
        self.progress("light fleet %s: removed in %.1f s" % (self.name, time.monotonic() - started))

    # -- access -------------------------------------------------------------------------------------

    def ssh_argv(self, name, argv):
        """``ip netns exec <ctl> ssh -F <config> <host> -- <argv>``."""
        return ["ip", "netns", "exec", os.path.basename(self.ctl_netns_path), "ssh", "-F", self.ssh_config_path, name,
                "--", shlex.join([str(a) for a in argv])]

    def controller_argv(self, argv):
        """``argv`` run in the controller namespace (where every light host is reachable directly)."""
        return ["ip", "netns", "exec", os.path.basename(self.ctl_netns_path)] + list(argv)

    def set_link(self, name, up):
        """Take light host ``name`` off the network (its switch-side link down: SSH, peers, tracker and repository all
        unreachable, the host itself still running) or put it back."""
        host = self.host(name)
        netns._check([netns.IP, "-n", self.net.switch_ns, "link", "set", host.net.switch_ifname, "up" if up else "down"],  # pylint: disable=protected-access
                     "light host %s" % name)

    def answers_ssh(self, name):
        """Whether light host ``name`` answers on port 22, seen from the controller namespace."""
        return ssh_banner(self.ctl_netns_path, self.host(name).addr, timeout=2.0) is not None

    def memory(self):
        """Per host: {"sshd": kib, "engine": kib, "other": kib, "total": kib} (Pss; nspawn counted in other)."""
        out = {}
        for host in self.hosts:
            out[host.name] = host.memory_kib()
        return out

    def engine_cpu_seconds(self):
        """{host: utime+stime seconds of its engine process(es)}."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for host in self.hosts:
            total = 0
            for pid, kind in host.processes():
                if kind == "engine":
                    total += _cpu_ticks(pid)
            out[host.name] = total / float(tick)
        return out

    # -- files --------------------------------------------------------------------------------------

    def _state(self, status):
        return {
            "name": self.name, "status": status, "owner_pid": os.getpid(), "owner_start": _start_time(os.getpid()),
            "subnet": str(self.subnet), "data_dir": self.data_dir, "state_dir": self.state_dir,
            "attached_to": self.attach["name"] if self.attach else None,
            "switch_ns": self.net.switch_ns if self.net else None,
            "namespaces": list(self.net._created) if self.net else [],  # pylint: disable=protected-access
            "controller_netns": self.ctl_netns_path,
            "hosts": [h.state() for h in self.hosts], "timings": self.timings,
            "inventory": self.inventory_path, "ssh_config": self.ssh_config_path,
            "sysctl": self.sysctl,
        }

    def _write_state(self, status):
        if os.path.isdir(self.state_dir):
            write_text_atomic(self.state_path, json.dumps(self._state(status), indent=1, sort_keys=True) + "\n")

    def _write_ssh_files(self, host_pub):
        key = " ".join(host_pub.split()[:2])
        write_text_atomic(self.known_hosts_path, "".join("%s,%s %s\n" % (h.addr, h.name, key) for h in self.hosts))
        lines = ["# light fleet %s: ip netns exec %s ssh -F %s <host>" % (
            self.name, os.path.basename(self.ctl_netns_path), self.ssh_config_path)]
        for host in self.hosts:
            lines += ["Host %s" % host.name, "    HostName %s" % host.addr]
        lines += ["Host *", "    User root", "    IdentityFile %s" % self.key_path, "    IdentitiesOnly yes",
                  "    UserKnownHostsFile %s" % self.known_hosts_path, "    GlobalKnownHostsFile /dev/null",
                  "    StrictHostKeyChecking yes", "    CheckHostIP no", "    BatchMode yes", "    ConnectTimeout 30",
                  "    LogLevel ERROR"]
        write_text_atomic(self.ssh_config_path, "\n".join(lines) + "\n")

    def _write_inventory(self, groups):
        q = json.dumps
        header = "# Ansible inventory of light fleet %s (tests/testfleet/lighthost.py); run ansible in namespace %s." % (
            self.name, os.path.basename(self.ctl_netns_path))
        lines = [header, "all:", "  children:", "    lighthosts:", "      vars:"] + self.connection_vars("        ") + ["      hosts:"]
        for host in self.hosts:
            lines.append("        %s: {ansible_host: %s}" % (host.name, q(host.addr)))
        for group in sorted(groups):
            lines += ["    %s:" % group, "      hosts:"]
            lines += ["        %s: {}" % member for member in groups[group]]
        write_text_atomic(self.inventory_path, "\n".join(lines) + "\n")


class LightHost:
    """One light host: a non-booted nspawn container (engine + sshd) in its own network namespace."""

    def __init__(self, fleet, name, net_host):
        self.fleet = fleet
        self.name = name
        self.net = net_host
        self.addr = net_host.addr
        self.dir = os.path.join(fleet.data_dir, name)
        self.upper = os.path.join(self.dir, "upper")
        self.run_engine = os.path.join(self.dir, "run-engine")
        self.console_log = os.path.join(fleet.state_dir, "console", name + ".log")
        self.machine = "%s-%s" % (net_host.fleet.prefix, name)
        self.proc = None
        self.pid = None
        self.cgroups = []
        self.ready = False

    @property
    def engine_socket_outside(self):
        """The engine's socket as the machine sees it (``/run/vmic-engine`` is bound from the host's directory)."""
        return os.path.join(self.run_engine, os.path.basename(self.fleet.layout.socket))

    def path(self, host_path):
        """Where a file the host wrote (outside /run) lives on the machine: its overlay upper directory."""
        return os.path.join(self.upper, host_path.lstrip("/"))

    def prepare(self, client_pub, hosts_text):
        """Write the host's own files into its upper directory (what the hypervisor role would leave)."""
        layout = self.fleet.layout
        os.makedirs(self.upper, mode=0o755)
        os.makedirs(self.run_engine, mode=0o700)

        def put(path, data, mode=0o644):
            dest = self.path(path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as handle:
                handle.write(data if isinstance(data, bytes) else data.encode())
            os.chmod(dest, mode)

        os.makedirs(self.path("/root/.ssh"), mode=0o700, exist_ok=True)
        os.chmod(self.path("/root"), 0o700)
        os.chmod(self.path("/root/.ssh"), 0o700)
        put("/root/.ssh/authorized_keys", client_pub + "\n", 0o600)
        put("/etc/hostname", self.name + "\n")
        put("/etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
        put("/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n%s" % (self.name, hosts_text))
        put(layout.config_file, layout.config_text)
        for path, (data, mode) in self.fleet.files.items():
            put(path, data, mode)
        for path in self.fleet.dirs:
            os.makedirs(self.path(path), mode=0o755, exist_ok=True)

    def argv(self, base, shared):
        """systemd-nspawn command line: no boot, stub init, the base root under a private overlay."""
        layout = self.fleet.layout
        return [NSPAWN, "--quiet", "--register=no", "--keep-unit", "--as-pid2",
                "--machine=" + self.machine, "--hostname=" + self.name,
                "--network-namespace-path=" + self.net.netns_path,
                "--overlay=%s:%s:/" % (base, self.upper), "--directory=" + base,
                "--bind-ro=%s:%s" % (os.path.join(shared, "engine-code"), layout.install_dir),
                "--bind-ro=%s:%s" % (os.path.join(shared, "init.sh"), INIT_PATH),
                "--bind-ro=%s:/etc/ssh/ssh_host_ed25519_key" % os.path.join(shared, "ssh_host_ed25519_key"),
                "--bind=%s:%s" % (self.run_engine, os.path.dirname(layout.socket)),
                "--console=pipe", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
                "--", "/bin/sh", INIT_PATH]

    def start(self, base, shared):
        """Start nspawn in cgroups of its own (as testfleet.nspawn does for booted hosts)."""
        self.proc, self.cgroups = start_nspawn(self.machine, self.argv(base, shared), self.console_log)
        self.pid = self.proc.pid

    def running(self):
        """True while nspawn runs."""
        return self.proc is not None and self.proc.poll() is None

    def processes(self):
        """[(pid, kind)] of the host's processes: kind is sshd, engine, nspawn or other."""
        out = []
        if self.pid and pid_alive(self.pid):
            out.append((self.pid, "nspawn"))
        for pid in netns.namespace_pids(self.net.ns):
            cmd = pid_cmdline(pid)
            text = " ".join(cmd)
            if cmd and os.path.basename(cmd[0]).startswith("sshd"):
                kind = "sshd"
            elif "--config" in cmd and "python" in os.path.basename(cmd[0] if cmd else ""):
                kind = "engine"
            elif text.startswith("sshd:"):
                kind = "sshd"
            else:
                kind = "other"
            out.append((pid, kind))
        return out

    def memory_kib(self):
        """Pss of the host's processes, by kind, and their sum."""
        out = {"sshd": 0, "engine": 0, "nspawn": 0, "other": 0, "engine_rss": 0, "engine_private": 0}
        for pid, kind in self.processes():
            info = _smaps_rollup(pid)
            out[kind] += info.get("Pss", 0)
            if kind == "engine":
                out["engine_rss"] += info.get("Rss", 0)
                out["engine_private"] += info.get("Private_Clean", 0) + info.get("Private_Dirty", 0)
        out["total"] = out["sshd"] + out["engine"] + out["nspawn"] + out["other"]
        return out

    def console_tail(self, lines=15):
        """Last lines of the host's console (sshd's and the init script's output)."""
        return tail_file(self.console_log, lines)

    def engine_log_tail(self, lines=15):
        """Last lines of the engine's log (/var/log/vmic-engine.log in the host)."""
        return tail_file(self.path("/var/log/vmic-engine.log"), lines)

    def state(self):
        """The host's entry in the fleet's state."""
        return {"name": self.name, "addr": self.addr, "ns": self.net.ns, "machine": self.machine, "nspawn_pid": self.pid,
                "dir": self.dir, "cgroups": self.cgroups}


def _smaps_rollup(pid):
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid, encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    out[parts[0][:-1]] = int(parts[1])
    except OSError:
        pass
    return out


def _cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[-1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


# -- kernel limits ------------------------------------------------------------------------------------

# The kernel keeps ONE neighbour (ARP) table for every network namespace: the entries of all light hosts and
# of the controller count against net.ipv4.neigh.default.gc_thresh3 (1024 by default; only the machine's own
# namespace may change it). Past it the kernel refuses new neighbours (/proc/net/stat/arp_cache "table_fulls")
# and connections fail with "No route to host" - what stopped the first 100-host rollout, whose hosts talk to
# each other over BitTorrent (up to every pair of hosts).
NEIGH_THRESH = "/proc/sys/net/ipv4/neigh/default/gc_thresh%d"


def neighbour_entries_needed(hosts):
    """Neighbour entries ``hosts`` light hosts may hold at once: each one for every peer, the controller, repository
    and tracker, and room for the rest of the machine."""
    return hosts * (hosts + 8) + 1024


def raise_neighbour_limits(hosts, thresh=NEIGH_THRESH):
    """Raise gc_thresh1 (below it the kernel collects no entry), gc_thresh2 (where it starts collecting at once) and
    gc_thresh3 (the hard limit) to what ``hosts`` light hosts need; never lowers them. Returns {path: [old, new]} of
    what it changed.

    gc_thresh1 matters as much as the others: above it (128 by default) the periodic collection removes every entry
    unused for gc_stale_time (60 s), and the next packet to that neighbour needs a new ARP request - a broadcast, which
    the fleet's software bridge copies to every light host. With 450 hosts whose engines talk to their DHT contacts
    every few minutes that was 200-450 broadcasts a second, 40 frames delivered for each frame sent, and 20-60 % of
    the machine's CPU in soft interrupts (docs/scale.md). Kept, a stale entry is checked again by unicast."""
    needed = neighbour_entries_needed(hosts)
    changed = {}
    # twice the need below the collection's thresholds: past gc_thresh2 the kernel collects at once (seen at 450 hosts
    # with gc_thresh1 = gc_thresh2 = the need: 9 000 entries dropped at 205 000)
    for index, value in ((1, 2 * needed), (2, 2 * needed), (3, 4 * needed)):
        path = thresh % index
        old = int(_read_text(path).strip())
        if old < value:
            write_text_sysctl(path, value)
            changed[path] = [old, value]
    return changed


def restore_limits(changed, state_root, name):
    """Put back what :func:`raise_neighbour_limits` changed, unless another light fleet whose owner lives is using it,
    or the value is no longer the one this fleet set."""
    if not changed:
        return
    for other in _fleet_names(state_root):
        if other == name:
            continue
        state = load_state(os.path.join(state_root, other, "state.json"))
        if state is not None and owner_alive(state):
            return
    for path, (old, new) in sorted(changed.items(), reverse=True):   # gc_thresh3 first: never below gc_thresh2
        try:
            if int(_read_text(path).strip()) == new:
                write_text_sysctl(path, old)
        except (OSError, ValueError):
            pass


def _fleet_names(state_root):
    try:
        return sorted(os.listdir(state_root))
    except FileNotFoundError:
        return []


def _read_text(path):
    with open(path, encoding="ascii") as handle:
        return handle.read()


def write_text_sysctl(path, value):
    """Write one sysctl value (a file under /proc/sys)."""
    with open(path, "w", encoding="ascii") as handle:
        handle.write("%d\n" % value)


# -- cleanup ------------------------------------------------------------------------------------------

def load_state(path):
    """The state at ``path`` or None."""
    if not os.path.exists(path):
        return None
    try:
        return read_json(path, limit=64 * 1024 * 1024)
    except FleetError:
        return None


def cleanup_from_state(state, progress=None, stop_timeout=10.0):
    """Remove what a light fleet made, whether or not its owner runs: nspawn processes (only those whose
    command line names the fleet's machine), namespaces (and what runs in them), cgroups, directories. Idempotent."""
    hosts = state.get("hosts", [])
    stopping = []
    for host in hosts:
        pid = host.get("nspawn_pid")
        if pid and ("--machine=" + host.get("machine", "")) in pid_cmdline(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            stopping.append(pid)
    deadline = time.monotonic() + stop_timeout
    for pid in stopping:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    existing = set(list_namespaces())
    for ns in reversed(state.get("namespaces", [])):
        if ns in existing:
            delete_namespace(ns)
    for host in hosts:
        remove_cgroups(host.get("cgroups", []))
    for path in (state.get("data_dir"), state.get("state_dir")):
        if path and os.path.isdir(path):
            remove_tree(path)
    if state.get("state_dir"):
        restore_limits(state.get("sysctl") or {}, os.path.dirname(state["state_dir"]), state.get("name"))
    if progress:
        progress("light fleet %s: removed (%d hosts)" % (state.get("name"), len(hosts)))


def cleanup_stale(state_root=STATE_ROOT, progress=None):
    """Remove every light fleet under ``state_root`` whose owner is gone. Returns their names."""
    removed = []
    for name in _fleet_names(state_root):
        state = load_state(os.path.join(state_root, name, "state.json"))
        if state is not None and not owner_alive(state):
            cleanup_from_state(state, progress=progress)
            removed.append(name)
    return removed


# -- measurement and command line ----------------------------------------------------------------------

def measure(fleet, idle_seconds=20.0):
    """Memory per host (Pss, KiB, by kind; mean and max) and the idle CPU of the engines over ``idle_seconds``."""
    mem = fleet.memory()
    count = max(1, len(mem))
    kinds = ("sshd", "engine", "nspawn", "other", "total", "engine_rss", "engine_private")
    mean = {k: sum(m[k] for m in mem.values()) / count for k in kinds}
    result = {"hosts": len(mem), "pss_kib_mean": mean, "pss_kib_max": max((m["total"] for m in mem.values()), default=0)}
    if idle_seconds:
        before = fleet.engine_cpu_seconds()
        t0 = time.monotonic()
        time.sleep(idle_seconds)
        after = fleet.engine_cpu_seconds()
        wall = time.monotonic() - t0
        used = sum(after.get(h, 0) - before.get(h, 0) for h in after)
        result["engine_idle_cpu_pct_mean"] = 100.0 * used / wall / count
        result["engines_idle_cores"] = used / wall
    return result


def format_measure(result):
    """One human line per figure."""
    mean = result["pss_kib_mean"]
    lines = ["memory per host (Pss, mean of %d): %.1f MiB = sshd %.1f + engine %.1f + nspawn %.1f + other %.1f "
             "(engine Rss %.1f MiB, private %.1f MiB); largest host %.1f MiB" % (
                 result["hosts"], mean["total"] / 1024, mean["sshd"] / 1024, mean["engine"] / 1024, mean["nspawn"] / 1024,
                 mean["other"] / 1024, mean["engine_rss"] / 1024, mean["engine_private"] / 1024, result["pss_kib_max"] / 1024)]
    if "engine_idle_cpu_pct_mean" in result:
        lines.append("idle engine CPU: %.2f %% of a core each, %.2f cores for all %d" % (
            result["engine_idle_cpu_pct_mean"], result["engines_idle_cores"], result["hosts"]))
    return lines


def main(argv=None):
    """``lighthost.py up --hosts N``: start N standalone light hosts, measure, ping them with ansible, remove them."""
    import argparse  # pylint: disable=import-outside-toplevel
    from testfleet.collection import REPO_ROOT, ensure_collection_path  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="start light hosts, measure them, remove them")
    p.add_argument("--name", default="lh")
    p.add_argument("--hosts", type=int, default=5)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--idle", type=float, default=20.0, help="seconds over which the engines' idle CPU is measured")
    p.add_argument("--hold", type=float, default=0.0, help="keep the hosts this many seconds (Ctrl-C ends)")
    sub.add_parser("cleanup", help="remove light fleets whose owner is gone")
    args = parser.parse_args(argv)
    _stop_on_signals()
    if args.cmd == "cleanup":
        print("\n".join(cleanup_stale(progress=_say)))
        return 0
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=ensure_collection_path())
    work = os.path.join(REPO_ROOT, ".tmp", "lighthost-%s" % args.name)
    layout = render_engine(os.path.join(work, "engine"), REPO_ROOT, env=env,
                           ansible_playbook=os.path.join(os.path.dirname(sys.executable), "ansible-playbook"))
    names = ["h%03d" % i for i in range(1, args.hosts + 1)]
    with LightFleet(args.name, names, layout, os.path.join(REPO_ROOT, "plugins", "module_utils"), batch=args.batch) as fleet:
        for line in format_measure(measure(fleet, args.idle)):
            print(line)
        print("inventory: %s (ansible in namespace %s)" % (fleet.inventory_path, os.path.basename(fleet.ctl_netns_path)))
        if args.hold:
            time.sleep(args.hold)
    return 0


class Interrupted(BaseException):
    """SIGTERM/SIGHUP arrived (SIGINT raises KeyboardInterrupt): unwind, so that every fleet is removed."""


def _raise_interrupted(signum, _frame):
    raise Interrupted("signal %d" % signum)


def _stop_on_signals():
    """SIGTERM and SIGHUP unwind like Ctrl-C (the fleets' __exit__ and atexit handlers clean up)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)


if __name__ == "__main__":
    sys.exit(main())
