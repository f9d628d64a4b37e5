"""Network namespaces for a test fleet: a private switch, N hosts on veth links, optional tc shaping.

Layout of one fleet (``prefix`` is unique per run: ``vmtf-<pid>-<random>``)::

    <prefix>-sw        switch namespace: bridge ``br0`` + one veth end ``v<i>`` per host
    <prefix>-<host>    host namespace: ``lo`` up, ``eth0`` (peer of ``v<i>``) with 198.18.x.y/16

The host's root namespace is never touched: the bridge and both veth ends are created directly in
the fleet's own namespaces (``ip -n``).  A host's link can be shaped with ``tbf``: its egress on the
host-side ``eth0`` and its ingress on the switch-side ``v<i>`` (the switch's egress towards the host);
optional delay/loss use ``netem`` under the ``tbf`` when the kernel has it.

The namespace names embed the creating process id, so :func:`cleanup_stale` removes the leftovers of
dead runs without disturbing a run going on in parallel.  A :class:`Fleet` is a context manager; its
:meth:`Fleet.teardown` kills every process left in its namespaces and deletes them, also after
errors; it is idempotent and registered with :mod:`atexit` as a last resort.

The demo fleet boots ``systemd-nspawn --network-namespace-path=/run/netns/<ns>`` into the same host
namespaces: :attr:`Host.netns_path` is that path.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time

NETNS_DIR = "/run/netns"
DEFAULT_PREFIX = "vmtf"
BENCH_RANGE = ipaddress.ip_network("198.18.0.0/15")
DEFAULT_SUBNET = "198.18.0.0/16"
HOSTS_PER_OCTET = 250
IP = "ip"
TC = "tc"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class FleetError(RuntimeError):
    """The fleet could not be created, changed or removed."""


def require_root():
    """Raise FleetError unless running as root with ``ip`` and ``tc`` available."""
    if os.geteuid() != 0:
        raise FleetError("test fleet: network namespaces need root (running as uid %d)" % os.geteuid())
    for tool in (IP, TC):
        if shutil.which(tool) is None:
            raise FleetError("test fleet: the '%s' command (package iproute2) is not installed" % tool)


def _check(argv, what, timeout=30, input_data=None):
    try:
        proc = subprocess.run(argv, input=input_data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FleetError("%s: %s timed out after %ss" % (what, " ".join(argv), timeout)) from exc
    if proc.returncode != 0:
        raise FleetError("%s: %s failed (exit %d): %s" % (
            what, " ".join(argv), proc.returncode, proc.stderr.decode("utf-8", "replace").strip()))
    return proc.stdout.decode("utf-8", "replace")


def list_namespaces():
    """Names of all named network namespaces (``/run/netns``)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def namespace_pids(ns):
    """Process ids running inside namespace ``ns``."""
    try:
        out = subprocess.run([IP, "netns", "pids", ns], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=30, check=False).stdout.decode()
    except subprocess.TimeoutExpired:
        return []
    return [int(tok) for tok in out.split() if tok.isdigit()]


def kill_namespace_processes(ns, grace=2.0):
    """SIGTERM, then SIGKILL after ``grace`` seconds, every process inside ``ns`` (all started by the fleet)."""
    pids = namespace_pids(ns)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = namespace_pids(ns)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while namespace_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def delete_namespace(ns):
    """Kill what runs in ``ns`` and delete it (its veth ends go with it)."""
    if ns not in list_namespaces():
        return
    kill_namespace_processes(ns)
    subprocess.run([IP, "netns", "delete", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=30, check=False)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix=DEFAULT_PREFIX):
    """Delete namespaces ``<prefix>-<pid>-*`` whose creating process is gone. Returns the names removed."""
    removed = []
    pattern = re.compile(r"^%s-(\d+)-[0-9a-f]+-" % re.escape(prefix))
    for ns in list_namespaces():
        match = pattern.match(ns)
        if match and not _pid_alive(int(match.group(1))):
            delete_namespace(ns)
            removed.append(ns)
    return removed


def _netns_argv(ns, argv):
    argv = [str(a) for a in argv]
    if not argv:
        raise FleetError("namespace %s: empty command" % ns)
    return [IP, "netns", "exec", ns] + argv


def run(ns, argv, check=True, timeout=60, **kwargs):
    """Run ``argv`` (a list, never a shell string) inside namespace ``ns``; returns CompletedProcess.

    Output is captured as text unless ``stdout``/``stderr`` are given.  ``check`` raises FleetError
    with the command's stderr on a non-zero exit.
    """
    if "stdout" not in kwargs and "stderr" not in kwargs and "capture_output" not in kwargs:
        kwargs["capture_output"] = True
    kwargs.setdefault("text", True)
    full = _netns_argv(ns, argv)
    proc = subprocess.run(full, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise FleetError("namespace %s: %s exited %d: %s" % (ns, " ".join(full[4:]), proc.returncode,
                                                             (proc.stderr or "").strip()[-2000:]))
    return proc


def popen(ns, argv, **kwargs):
    """Start ``argv`` inside namespace ``ns`` and return the Popen.

    ``ip netns exec`` execs the command in place, so the Popen's pid is the command itself and
    signals sent to it reach the program.
    """
    return subprocess.Popen(_netns_argv(ns, argv), **kwargs)


class Host:
    """One host of the fleet: its namespace, address and link names."""

    def __init__(self, fleet, name, index, ns, addr, prefixlen):
        self.fleet = fleet
        self.name = name
        self.index = index
        self.ns = ns
        self.addr = addr
        self.prefixlen = prefixlen
        self.ifname = "eth0"
        self.switch_ifname = "v%d" % index
        self.shaping = None

    @property
    def netns_path(self):
        """Path of the namespace, for ``systemd-nspawn --network-namespace-path``."""
        return os.path.join(NETNS_DIR, self.ns)

    def run(self, argv, **kwargs):
        """:func:`run` inside this host's namespace."""
        return run(self.ns, argv, **kwargs)

    def popen(self, argv, **kwargs):
        """:func:`popen` inside this host's namespace; the process is killed at teardown."""
        return self.fleet.track(popen(self.ns, argv, **kwargs))

    def link_stats(self):
        """Bytes and packets counted on the host's ``eth0``: dict with tx_bytes, rx_bytes, tx_packets, rx_packets."""
        out = _check([IP, "-n", self.ns, "-s", "-j", "link", "show", self.ifname], "host %s" % self.name)
        stats = json.loads(out)[0]["stats64"]
        return {"tx_bytes": stats["tx"]["bytes"], "rx_bytes": stats["rx"]["bytes"],
                "tx_packets": stats["tx"]["packets"], "rx_packets": stats["rx"]["packets"]}

    def __repr__(self):
        return "Host(%s, %s, ns=%s)" % (self.name, self.addr, self.ns)


def _rate_bits(rate_mbit):
    return int(round(float(rate_mbit) * 1000000))


def _tbf_args(rate_mbit):
    rate = _rate_bits(rate_mbit)
    # Burst of about 10 ms of traffic, at least 64 KiB so that a GSO super-packet fits in one burst.
    burst = max(65536, rate // 8 // 100)
    return ["tbf", "rate", "%dbit" % rate, "burst", str(burst), "latency", "50ms"]


class Fleet:
    """A switch namespace with a bridge and hosts on veth links; see the module docstring.

    ``hosts`` is an int (hosts named ``h0``, ``h1``...) or a list of names ([a-z0-9-]).  ``rate_mbit``
    shapes every link both ways (None = unshaped); ``delay_ms``/``loss_pct`` need ``sch_netem``.
    """

    def __init__(self, hosts=0, prefix=DEFAULT_PREFIX, subnet=DEFAULT_SUBNET, rate_mbit=None,
                 delay_ms=0, loss_pct=0.0):
        require_root()
        self.base_prefix = prefix
        self.prefix = "%s-%d-%s" % (prefix, os.getpid(), secrets.token_hex(3))
        self.subnet = ipaddress.ip_network(subnet)
        if not self.subnet.subnet_of(BENCH_RANGE):
            raise FleetError("test fleet: subnet %s is outside the benchmark range %s" % (subnet, BENCH_RANGE))
        if self.subnet.prefixlen > 20:
            raise FleetError("test fleet: subnet %s is too small (need /20 or larger)" % subnet)
        self.switch_ns = "%s-sw" % self.prefix
        self.hosts = []
        self.by_name = {}
        self._created = []
        self._procs = []
        self._initial = hosts
        self._rate_mbit = rate_mbit
        self._delay_ms = delay_ms
        self._loss_pct = loss_pct
        self._torn_down = False
        self._set_up = False

    # -- life cycle -----------------------------------------------------------------------------

    def __enter__(self):
        self.setup()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.teardown()
        return False

    def setup(self):
        """Create the switch and the initial hosts; on any failure remove what was made and re-raise."""
        if self._set_up:
            return self
        self._set_up = True
        atexit.register(self.teardown)
        try:
            cleanup_stale(self.base_prefix)
            self._add_ns(self.switch_ns)
            sw = ["-n", self.switch_ns]
            _check([IP] + sw + ["link", "set", "lo", "up"], "switch")
            _check([IP] + sw + ["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"],
                   "switch")
            _check([IP] + sw + ["link", "set", "br0", "up"], "switch")
            names = self._initial if isinstance(self._initial, (list, tuple)) else \
                ["h%d" % i for i in range(int(self._initial))]
            for name in names:
                self.add_host(name, rate_mbit=self._rate_mbit, delay_ms=self._delay_ms, loss_pct=self._loss_pct)
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self):
        """Stop tracked processes, kill anything left in the namespaces, delete them. Idempotent."""
        if self._torn_down:
            return
        self._torn_down = True
        for proc in self._procs:
            if proc.poll() is None:
                _signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        # hosts first (their processes hold the veths), the switch last
        for ns in reversed(self._created):
            delete_namespace(ns)
        self._created = []
        try:
            atexit.unregister(self.teardown)
        except Exception:  # pylint: disable=broad-except
            pass

    def _add_ns(self, ns):
        _check([IP, "netns", "add", ns], "namespace %s" % ns)
        self._created.append(ns)

    def track(self, proc):
        """Remember a Popen so that teardown stops it; returns it."""
        self._procs.append(proc)
        return proc

    # -- hosts ------------------------------------------------------------------------------------

    def address(self, index):
        """Address of host ``index``: 198.18.(1 + i // 250).(1 + i % 250) within the subnet."""
        offset = 256 * (1 + index // HOSTS_PER_OCTET) + 1 + index % HOSTS_PER_OCTET
        if offset >= self.subnet.num_addresses - 1:
            raise FleetError("test fleet: subnet %s has no room for host #%d" % (self.subnet, index))
        return str(self.subnet.network_address + offset)

    def add_host(self, name=None, rate_mbit=None, delay_ms=0, loss_pct=0.0, ingress_rate_mbit=None):
        """Create one host namespace linked to the switch; returns the Host."""
        if self._torn_down:
            raise FleetError("test fleet %s: already torn down" % self.prefix)
        index = len(self.hosts)
        name = name or "h%d" % index
        if not _NAME_RE.match(name) or name == "sw" or name in self.by_name:
            raise FleetError("test fleet: bad or duplicate host name %r" % name)
        ns = "%s-%s" % (self.prefix, name)
        host = Host(self, name, index, ns, self.address(index), self.subnet.prefixlen)
        self._add_ns(ns)
        what = "host %s" % name
        sw = [IP, "-n", self.switch_ns]
        hn = [IP, "-n", ns]
        _check(sw + ["link", "add", host.switch_ifname, "type", "veth", "peer", "name", host.ifname, "netns", ns], what)
        _check(sw + ["link", "set", host.switch_ifname, "master", "br0"], what)
        _check(sw + ["link", "set", host.switch_ifname, "up"], what)
        _check(hn + ["link", "set", "lo", "up"], what)
        _check(hn + ["addr", "add", "%s/%d" % (host.addr, host.prefixlen), "dev", host.ifname], what)
        _check(hn + ["link", "set", host.ifname, "up"], what)
        self.hosts.append(host)
        self.by_name[name] = host
        if rate_mbit or delay_ms or loss_pct:
            self.shape(host, rate_mbit, delay_ms=delay_ms, loss_pct=loss_pct, ingress_rate_mbit=ingress_rate_mbit)
        return host

    def __getitem__(self, key):
        return self.by_name[key] if isinstance(key, str) else self.hosts[key]

    def __len__(self):
        return len(self.hosts)

    def __iter__(self):
        return iter(self.hosts)

    # -- links ------------------------------------------------------------------------------------

    def shape(self, host, rate_mbit=None, delay_ms=0, loss_pct=0.0, ingress_rate_mbit=None):
        """Shape ``host``'s link: egress ``rate_mbit`` on eth0, ingress ``ingress_rate_mbit`` (default: same)
        on the switch side; delay/loss (netem) on both directions. ``rate_mbit=None`` and no delay/loss
        removes the shaping."""
        host = self[host] if isinstance(host, (str, int)) else host
        if ingress_rate_mbit is None:
            ingress_rate_mbit = rate_mbit
        self._shape_dev(host.ns, host.ifname, rate_mbit, delay_ms, loss_pct)
        self._shape_dev(self.switch_ns, host.switch_ifname, ingress_rate_mbit, delay_ms, loss_pct)
        host.shaping = {"egress_mbit": rate_mbit, "ingress_mbit": ingress_rate_mbit,
                        "delay_ms": delay_ms, "loss_pct": loss_pct}

    @staticmethod
    def _shape_dev(ns, dev, rate_mbit, delay_ms, loss_pct):
        what = "link %s in %s" % (dev, ns)
        base = [TC, "-n", ns, "qdisc"]
        subprocess.run(base + ["del", "dev", dev, "root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30, check=False)
        netem = []
        if delay_ms:
            netem += ["delay", "%gms" % float(delay_ms)]
        if loss_pct:
            netem += ["loss", "%g%%" % float(loss_pct)]
        if rate_mbit:
            _check(base + ["add", "dev", dev, "root", "handle", "1:"] + _tbf_args(rate_mbit), what)
            if netem:
                _netem(base + ["add", "dev", dev, "parent", "1:1", "handle", "10:", "netem"] + netem, what)
        elif netem:
            _netem(base + ["add", "dev", dev, "root", "handle", "10:", "netem"] + netem, what)


def _netem(argv, what):
    try:
        _check(argv, what)
    except FleetError as exc:
        if "unknown" in str(exc).lower():
            raise FleetError("%s: delay/loss need the kernel's netem qdisc (sch_netem), which this kernel "
                             "does not have: %s" % (what, exc)) from exc
        raise
