"""Debian's opentracker, closed, inside a fleet namespace.

Debian builds opentracker with ``WANT_ACCESSLIST_WHITE``: it tracks only the info-hashes listed in its
whitelist file (``-w FILE`` on the command line, ``access.whitelist FILE`` in a config file), one
40-hex info-hash per line, and re-reads that file on SIGHUP.  It refuses to keep running as root: it
chroots to ``-d DIR`` and drops to ``-u USER`` (Debian's ``_opentracker``, else ``nobody``), so the
whitelist lives in a world-readable work directory and is named relative to it.

For a hybrid torrent both swarms must be listed: the v1 info-hash and the v2 info-hash truncated to
20 bytes (what a client announces for the v2 swarm).

A tracker runs in a fleet host's namespace, or (``host=None``) in this process's own namespace on
127.0.0.1, where the engine tests on loopback use it.  :func:`opentracker` is the one pytest fixture
that starts them (the conftests of tests/engines and tests/swarm import it).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time

import pytest

from testfleet.netns import FleetError, run
from testfleet.waiting import free_port

OPENTRACKER = "/usr/bin/opentracker"
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")
WHITELIST = "whitelist.txt"
DEFAULT_PORT = 6969
LOOPBACK = "127.0.0.1"


def _tracker_user():
    for name in ("_opentracker", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise FleetError("opentracker: neither user _opentracker nor nobody exists to drop privileges to")


def _normalise(info_hash):
    value = info_hash.strip().lower()
    if len(value) == 64:  # a v2 info-hash: trackers see its first 20 bytes
        value = value[:40]
    if len(value) != 40 or any(c not in "0123456789abcdef" for c in value):
        raise FleetError("opentracker whitelist: %r is not a 40/64-hex info-hash" % info_hash)
    return value


class Tracker:
    """opentracker on ``host`` (a netns.Host, or None: 127.0.0.1 of this namespace) at ``port`` (TCP and UDP),
    whitelist in ``workdir``."""

    def __init__(self, host, workdir, port=DEFAULT_PORT):
        if not os.access(OPENTRACKER, os.X_OK):
            raise FleetError("opentracker: %s is not installed (apt-get install opentracker)" % OPENTRACKER)
        self.host = host
        self.addr = host.addr if host is not None else LOOPBACK
        self.name = host.name if host is not None else "loopback"
        self.port = port
        self.workdir = os.path.abspath(workdir)
        self.proc = None
        self.hashes = set()
        self.log_path = os.path.join(self.workdir, "opentracker.log")

    @property
    def announce_url(self):
        """HTTP announce URL."""
        return "http://%s:%d/announce" % (self.addr, self.port)

    @property
    def whitelist_path(self):
        """Path of the whitelist file (outside the chroot)."""
        return os.path.join(self.workdir, WHITELIST)

    def _write_whitelist(self):
        tmp = self.whitelist_path + ".tmp"
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write("".join("%s\n" % h for h in sorted(self.hashes)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.whitelist_path)

    def start(self, hashes=(), timeout=10):
        """Write the whitelist and start opentracker; returns when it answers announces."""
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.hashes = {_normalise(h) for h in hashes}
        self._write_whitelist()
        argv = [OPENTRACKER, "-i", self.addr, "-p", str(self.port), "-P", str(self.port), "-d", self.workdir, "-w", WHITELIST]
        if os.geteuid() == 0:
            argv += ["-u", _tracker_user()]
        with open(self.log_path, "ab") as log:
            popen = self.host.popen if self.host is not None else subprocess.Popen
            self.proc = popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FleetError("opentracker on %s exited %s: %s" % (self.name, self.proc.returncode, self._log_tail()))
            try:
                self.probe("00" * 20)
                return self
            except FleetError as exc:
                last = exc
                time.sleep(0.1)
        raise FleetError("opentracker on %s did not answer within %ss: %s" % (self.name, timeout, last))

    def _log_tail(self):
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def set_whitelist(self, hashes, timeout=10):
        """Replace the approved set (v1 and/or v2 hex), SIGHUP the tracker, wait until the new set applies."""
        new = {_normalise(h) for h in hashes}
        added = new - self.hashes
        removed = self.hashes - new
        self.hashes = new
        self._write_whitelist()
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGHUP)
        # opentracker reloads in a worker thread: wait until the change is visible
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.is_tracked(h) for h in added) and not any(self.is_tracked(h) for h in removed):
                return
            time.sleep(0.1)
        raise FleetError("opentracker on %s: whitelist change not applied within %ss" % (self.name, timeout))

    def add(self, hashes, timeout=10):
        """Approve more info-hashes."""
        self.set_whitelist(self.hashes | {_normalise(h) for h in hashes}, timeout)

    def probe(self, info_hash_hex):
        """Announce (event=stopped) from the tracker's namespace; returns {"ok", "failure", "raw"}."""
        argv = [sys.executable, PROBE, "announce", self.announce_url, _normalise(info_hash_hex)]
        if self.host is not None:
            proc = run(self.host.ns, argv, check=False, timeout=20)
        else:
            proc = subprocess.run(argv, check=False, timeout=20, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FleetError("opentracker probe on %s failed: %s" % (self.name, proc.stderr.strip()[-500:]))
        return json.loads(proc.stdout)

    def is_tracked(self, info_hash_hex):
        """True when the tracker accepts announces for this info-hash."""
        return bool(self.probe(info_hash_hex)["ok"])

    def stop(self, sig=signal.SIGTERM):
        """Stop the tracker (SIGKILL with ``sig=signal.SIGKILL`` to simulate a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def running(self):
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None


def tracker_available():
    """True when opentracker is installed (and ``ip`` too, for namespaces)."""
    return os.access(OPENTRACKER, os.X_OK) and shutil.which("ip") is not None


@pytest.fixture(scope="session")
def opentracker(tmp_path_factory):
    """Factory: ``opentracker(hashes=(), host=None)`` -> a started, closed Tracker that tracks ``hashes``.

    ``hashes``: v1 and/or v2 info-hashes in hex (a v2 one is listed truncated); ``host``: a netns.Host
    (port 6969), or None for 127.0.0.1 of this namespace on a free port.  Every tracker it started is
    stopped at the end of the session.
    """
    started = []

    def start(hashes=(), host=None):
        port = DEFAULT_PORT if host is not None else free_port(LOOPBACK)
        tracker = Tracker(host, str(tmp_path_factory.mktemp("tracker")), port)
        started.append(tracker)
        return tracker.start(hashes)

    yield start
    for tracker in started:
        tracker.stop()
