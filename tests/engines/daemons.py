"""Engine daemons on loopback for the tests of this directory (and bench/engine_idle.py).

``EngineProcess`` runs the collection's libtorrent engine service as a subprocess, ``RtorrentProcess``
a headless rtorrent 0.9; each has its own directory, unix socket (outside pytest's long paths: a
socket path holds at most about 100 bytes) and 127.0.0.x address.  ``VMIC_ENGINE_PYTHON`` names the
interpreter of the engine service (default: this one), e.g. ``/usr/bin/python3`` for Debian's
python3-libtorrent 2.0.8 while the venv holds the 2.1 wheel.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from testfleet.collection import COLLECTIONS
from testfleet.waiting import free_port, wait_for

from ansible_collections.vmic.fleet.plugins.module_utils.engine import LibtorrentEngineClient
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import Image
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import PlannedImage, SyncPlan
from ansible_collections.vmic.fleet.plugins.module_utils.rtorrent_engine import RtorrentEngineClient

ENGINE_MODULE = "ansible_collections.vmic.fleet.plugins.module_utils.engine_service"
ENGINE_PYTHON = os.environ.get("VMIC_ENGINE_PYTHON") or sys.executable
DEBIAN_PYTHON = "/usr/bin/python3"
RTORRENT = shutil.which("rtorrent") or "/usr/bin/rtorrent"


def engine_argv(config_path, python=None):
    """The command line of an engine service with the config file ``config_path``."""
    return [python or ENGINE_PYTHON, "-m", ENGINE_MODULE, "--config", config_path]


def engine_env():
    """The environment of an engine service: the collection importable as ansible_collections.vmic.fleet."""
    return dict(os.environ, PYTHONPATH=COLLECTIONS)


def libtorrent_of(python):
    """The libtorrent version ``python`` imports, or None when it imports none."""
    result = subprocess.run([python, "-c", "import libtorrent; print(libtorrent.__version__)"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, check=False, timeout=30)
    if result.returncode != 0:
        return None
    return result.stdout.decode().strip() or None


class EngineProcess(object):
    """One engine service subprocess with its own socket, state dir and address."""

    def __init__(self, base, name, ip, python=None, **config):
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "engine.json")
        self.log_path = os.path.join(self.dir, "engine.log")
        self.python = python
        if "socket" not in config:
            config["socket"] = os.path.join(tempfile.mkdtemp(prefix="vmic-eng-"), "engine.sock")
        self.socket = config["socket"]
        values = {"state_dir": os.path.join(self.dir, "state"),
                  "listen_interfaces": ["%s:%d" % (ip, free_port(ip))], "dht": False, "resume_interval": 1}
        values.update(config)
        with open(self.config_path, "w") as handle:
            json.dump(values, handle)
        self.client = LibtorrentEngineClient(self.socket, timeout=30)
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(engine_argv(self.config_path, self.python), stdout=log, stderr=log, env=engine_env())
        wait_for("engine %s to answer" % self.dir, self._answers, timeout=20)
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("engine exited with %s:\n%s" % (self.proc.returncode, self.log()))
        try:
            return self.client.ping()["ok"]
        except EngineError:
            return False

    def log(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def status(self, key):
        found = self.client.status(key)
        assert len(found) == 1, found
        return found[0]

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def cleanup(self):
        self.kill(signal.SIGTERM)
        shutil.rmtree(os.path.dirname(self.socket), ignore_errors=True)


class RtorrentProcess(object):
    """One headless rtorrent with its own session, download dir, socket and address."""

    def __init__(self, base, name, ip, user=None):
        self.dir = os.path.join(base, name)
        self.user = user
        self.session = os.path.join(self.dir, "session")
        self.downloads = os.path.join(self.dir, "downloads")
        for path in (self.session, self.downloads):
            os.makedirs(path)
        self.sockdir = tempfile.mkdtemp(prefix="vmic-rt-")
        if user is not None:
            for path in (self.dir, self.session, self.downloads, self.sockdir):
                os.chown(path, user, user)
        self.socket = os.path.join(self.sockdir, "rpc.sock")
        self.port = free_port(ip)
        self.rc = os.path.join(self.dir, "rtorrent.rc")
        self.log_path = os.path.join(self.dir, "rtorrent.log")
        lines = [
            "system.daemon.set = true",
            "session.path.set = %s" % self.session,
            "directory.default.set = %s" % self.downloads,
            "network.scgi.open_local = %s" % self.socket,
            "network.bind_address.set = %s" % ip,
            "network.port_range.set = %d-%d" % (self.port, self.port),
            "network.port_random.set = no",
            "dht.mode.set = disable",
            "protocol.pex.set = no",
            "trackers.use_udp.set = no",
            "pieces.hash.on_completion.set = no",
        ]
        with open(self.rc, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.client = RtorrentEngineClient(self.socket, timeout=20)
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            as_user = {} if self.user is None else {"user": self.user, "group": self.user, "env": dict(os.environ, HOME=self.dir)}
            self.proc = subprocess.Popen([RTORRENT, "-n", "-o", "import=%s" % self.rc], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=self.dir, **as_user)
        wait_for("rtorrent %s to answer" % self.dir, self._answers, timeout=20, interval=0.1)
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            with open(self.log_path, "rb") as handle:
                raise AssertionError("rtorrent exited with %s: %s" % (self.proc.returncode, handle.read()[-2000:]))
        if not os.path.exists(self.socket):
            return False
        try:
            return self.client.ping()["ok"]
        except EngineError:
            return False

    def status(self, key):
        found = self.client.status(key)
        assert len(found) == 1, found
        return found[0]

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        shutil.rmtree(self.sockdir, ignore_errors=True)


def planned(image, torrent_url, identifier, version, list_identifier="3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"):
    """The PlannedImage of ``image`` (the conftest's image dict) as endorser "good"'s list gives it."""
    meta = image["meta"]
    image = Image({"dc:identifier": identifier, "hv:version": version, "dc:title": "Cirros", "hv:size": meta.size,
                   "sl:checksum:sha512": image["sha512"], "hv:uri": "https://repo.example/" + meta.name,
                   "vmic:torrent": torrent_url, "vmic:torrent_sha256": meta.sha256, "vmic:btih_v1": meta.info_hash_v1,
                   "vmic:btih_v2": meta.info_hash_v2})
    return PlannedImage(image, list_identifier, "good")


def sync_plan(add=(), retire=()):
    """A SyncPlan that adds and retires the given images."""
    plan = SyncPlan()
    plan.add, plan.retire = list(add), list(retire)
    return plan
