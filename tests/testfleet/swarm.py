"""A BitTorrent swarm on a test fleet: seed (repository) host, tracker, web seed, one engine per host.

Hosts (one network namespace each, see :mod:`testfleet.netns`):

* ``seed``     the repository: an engine seeding the image in seed mode, and the HTTP web seed
               (:mod:`testfleet.httpd`) serving the same directory, sharing the seed's shaped link;
* ``tracker``  Debian's opentracker, closed (whitelist), unshaped (announces are tiny);
* ``p0..pN-1`` the hypervisors: one engine each, with its own config, state dir, partial dir
               (the engine's save dir) and store dir (where a verified image is moved).

Engines are the collection's engine service (``engine="service"``): ``python -m
ansible_collections.vmic.fleet.plugins.module_utils.engine_service --config FILE`` with PYTHONPATH
pointing at ``.tmp/collections``, talked to over its unix socket with ``LibtorrentEngineClient``
(unix sockets work across network namespaces, so the test process stays in the root namespace).
``engine="bare"`` runs :mod:`testfleet.bare_peer` instead (reference peer, same status fields).

Typical use::

    with Swarm(workdir, peers=8, rate_mbit=40) as sw:
        image = sw.make_image("img.raw", 8 << 20)
        meta = sw.make_torrent(image)
        sw.seed(meta)
        sw.add_everywhere(meta)
        sw.wait_complete(meta.info_hash_v1, deadline=120)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from testfleet.collection import REPO_ROOT, ensure_collection_path
from testfleet.httpd import write_json_atomic
from testfleet.netns import Fleet, FleetError
from testfleet.tracker import Tracker

HERE = os.path.dirname(os.path.abspath(__file__))
HTTPD = os.path.join(HERE, "httpd.py")
BARE_PEER = os.path.join(HERE, "bare_peer.py")
ENGINE_SERVICE_FILE = os.path.join(REPO_ROOT, "plugins", "module_utils", "engine_service.py")
ENGINE_MODULE = "ansible_collections.vmic.fleet.plugins.module_utils.engine_service"
BT_PORT = 6881
HTTP_PORT = 8080
TRACKER_PORT = 6969
MAX_SOCKET_PATH = 100


def engine_service_available():
    """True once the collection's engine service exists."""
    return os.path.isfile(ENGINE_SERVICE_FILE)


def sha512_file(path, chunk=1 << 20):
    """Hex sha512 of a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def make_image(path, size, seed=None):
    """Write ``size`` incompressible bytes to ``path`` (deterministic when ``seed`` is given)."""
    rng = random.Random(seed) if seed is not None else None
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            count = min(1 << 20, size - written)
            handle.write(rng.randbytes(count) if rng else os.urandom(count))
            written += count
    return path


def _short_dir():
    return tempfile.mkdtemp(prefix="vmtf-sock-", dir="/tmp")


class Node:
    """Common part of an engine running in one host namespace."""

    kind = None

    def __init__(self, swarm, host, workdir, config=None):
        self.swarm = swarm
        self.host = host
        self.name = host.name
        self.dir = workdir
        self.state_dir = os.path.join(workdir, "state")
        self.partial_dir = os.path.join(workdir, "partial")
        self.store_dir = os.path.join(workdir, "store")
        self.log_path = os.path.join(workdir, "engine.log")
        self.config = dict(config or {})
        self.proc = None
        self.started_at = None
        for path in (self.state_dir, self.partial_dir, self.store_dir):
            os.makedirs(path, exist_ok=True)

    @property
    def listen(self):
        """addr:port of the BitTorrent listener."""
        return "%s:%d" % (self.host.addr, BT_PORT)

    @property
    def running(self):
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Stop the engine with ``sig`` (SIGKILL simulates a crash); waits for the exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self):
        """SIGKILL (no chance to save anything)."""
        return self.stop(signal.SIGKILL)

    def log_tail(self, nbytes=3000):
        """Last bytes of the engine's stderr."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - nbytes))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def file_path(self, name, where="partial"):
        """Path of an image file in the partial (save) or store dir."""
        return os.path.join(self.partial_dir if where == "partial" else self.store_dir, name)

    def _popen(self, argv, env=None):
        log = open(self.log_path, "ab")  # pylint: disable=consider-using-with
        try:
            self.proc = self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        self.started_at = time.time()

    def one(self, key):
        """Status dict of torrent ``key`` or None."""
        for item in self.status():
            if item.get("key") == key or item.get("info_hash_v1") == key:
                return item
        return None


class ServiceNode(Node):
    """The collection's engine service, configured by a JSON file, driven over its unix socket."""

    kind = "service"

    def __init__(self, swarm, host, workdir, config=None):
        super().__init__(swarm, host, workdir, config)
        self.config_path = os.path.join(workdir, "engine.json")
        self.socket_path = os.path.join(workdir, "engine.sock")
        if len(self.socket_path) > MAX_SOCKET_PATH:
            self.socket_path = os.path.join(swarm.short_dir, "%s.sock" % self.name)
        self._client = None

    def write_config(self):
        """Write the engine's JSON config (defaults for a test host, overridden by ``self.config``)."""
        cfg = {
            "socket": self.socket_path,
            "state_dir": self.state_dir,
            "listen_interfaces": [self.listen],
            "dht": True,
            "dht_bootstrap_nodes": list(self.swarm.dht_bootstrap_for(self)),
            "pex": True,
        }
        cfg.update(self.config)
        write_json_atomic(self.config_path, cfg)
        return cfg

    def start(self, timeout=30):
        """Start the service and wait until its socket answers."""
        if not engine_service_available():
            raise FleetError("engine service %s does not exist" % ENGINE_SERVICE_FILE)
        self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = ensure_collection_path() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._client = None
        self._popen([sys.executable, "-m", ENGINE_MODULE, "--config", self.config_path], env=env)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FleetError("engine on %s exited %s at start:\n%s" % (self.name, self.proc.returncode,
                                                                           self.log_tail()))
            if os.path.exists(self.socket_path):
                try:
                    self.client().status()
                    return self
                except Exception as exc:  # pylint: disable=broad-except
                    last = exc
            time.sleep(0.1)
        raise FleetError("engine on %s: no answer on %s within %ss (%s):\n%s" % (
            self.name, self.socket_path, timeout, last, self.log_tail()))

    def client(self):
        """A LibtorrentEngineClient for this node."""
        if self._client is None:
            ensure_collection_path()
            from ansible_collections.vmic.fleet.plugins.module_utils.engine import LibtorrentEngineClient  # pylint: disable=import-outside-toplevel
            self._client = LibtorrentEngineClient(self.socket_path, timeout=30)
        return self._client

    def add(self, torrent_data, save_dir=None, seed_mode=False):
        """Give the engine a torrent; returns its key (v1 info-hash)."""
        return self.client().add(torrent_data, save_dir or self.partial_dir, seed_mode=seed_mode)

    def status(self, key=None):
        """Engine status list."""
        return self.client().status(key)

    def move(self, key, dest_dir=None):
        """Move a completed torrent's file into the store."""
        return self.client().move(key, dest_dir or self.store_dir)

    def remove(self, key, delete_files=False):
        """Drop a torrent from the engine."""
        return self.client().remove(key, delete_files)


class BareNode(Node):
    """A :mod:`testfleet.bare_peer` process; torrents are given at start (add restarts the process)."""

    kind = "bare"

    def __init__(self, swarm, host, workdir, config=None):
        super().__init__(swarm, host, workdir, config)
        self.status_path = os.path.join(workdir, "status.json")
        self.torrents = []
        self.seed_mode = False
        self.extra_args = list(self.config.get("args", []))

    def start(self, timeout=30):
        """Start (or restart) the bare peer with the torrents given so far."""
        if self.running:
            self.stop()
        try:
            os.unlink(self.status_path)
        except FileNotFoundError:
            pass
        argv = [sys.executable, BARE_PEER, "--listen", self.listen, "--save", self.partial_dir,
                "--status-file", self.status_path]
        for path in self.torrents:
            argv += ["--torrent", path]
        if self.seed_mode:
            argv.append("--seed-mode")
        for node in self.swarm.dht_bootstrap_for(self):
            argv += ["--dht-bootstrap", node]
        argv += self.extra_args
        if not self.torrents:
            return self
        self._popen(argv)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FleetError("bare peer on %s exited %s:\n%s" % (self.name, self.proc.returncode, self.log_tail()))
            if os.path.exists(self.status_path):
                return self
            time.sleep(0.1)
        raise FleetError("bare peer on %s wrote no status within %ss" % (self.name, timeout))

    def add(self, torrent_data, save_dir=None, seed_mode=False):
        """Write the torrent, restart the process with it; returns the v1 info-hash."""
        path = os.path.join(self.dir, "%d.torrent" % len(self.torrents))
        with open(path, "wb") as handle:
            handle.write(torrent_data)
        if save_dir and save_dir != self.partial_dir:
            self.partial_dir = save_dir
        self.torrents.append(path)
        self.seed_mode = self.seed_mode or seed_mode
        self.start()
        return self.swarm.key_of(torrent_data)

    def status(self, key=None):
        """Status list read from the status file."""
        try:
            with open(self.status_path, "r", encoding="utf-8") as handle:
                items = json.load(handle)
        except (OSError, ValueError):
            return []
        return [i for i in items if key is None or i["key"] == key]

    def move(self, key, dest_dir=None):
        """Copy-free move of the finished file (the bare peer keeps seeding from the old path until restart)."""
        for item in self.status(key):
            os.replace(os.path.join(item["save_dir"], item["name"]),
                       os.path.join(dest_dir or self.store_dir, item["name"]))

    def remove(self, key, delete_files=False):
        """Not supported by the bare peer beyond stopping it."""
        self.stop()


NODE_KINDS = {"service": ServiceNode, "bare": BareNode}


class Swarm:
    """Seed + tracker + N engine hosts on one fleet; a context manager that cleans everything up.

    ``rate_mbit``: each peer's link (both ways); ``seed_rate_mbit``: the seed host's link (default:
    same as peers); ``engine``: "service" or "bare"; ``engine_config``: extra config keys for every
    peer engine (``seed_config`` for the seed's); ``tracker``: start opentracker; ``web_seed``: start
    the seed's HTTP server; ``dht_bootstrap``: peers bootstrap their DHT from the seed's engine.
    """

    def __init__(self, workdir, peers=8, rate_mbit=40, seed_rate_mbit=None, engine="service",
                 engine_config=None, seed_config=None, tracker=True, web_seed=True, dht_bootstrap=True,
                 extra_hosts=()):
        if engine not in NODE_KINDS:
            raise FleetError("unknown engine kind %r (choose from %s)" % (engine, ", ".join(sorted(NODE_KINDS))))
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.n_peers = peers
        self.rate_mbit = rate_mbit
        self.seed_rate_mbit = seed_rate_mbit or rate_mbit
        self.engine_kind = engine
        self.engine_config = dict(engine_config or {})
        self.seed_config = dict(seed_config or {})
        self.want_tracker = tracker
        self.want_web_seed = web_seed
        self.dht_bootstrap = dht_bootstrap
        self.extra_hosts = list(extra_hosts)
        self.fleet = None
        self.tracker = None
        self.httpd = None
        self.seed_node = None
        self.peers = []
        self.others = []
        self.repo_dir = os.path.join(self.workdir, "repo")
        self.short_dir = _short_dir()
        os.makedirs(self.repo_dir, exist_ok=True)

    # -- life cycle ---------------------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.teardown()
        return False

    def start(self):
        """Create the fleet, start tracker and web seed (per options); engines start in :meth:`seed` / :meth:`start_peers`."""
        try:
            self.fleet = Fleet().setup()
            seed_host = self.fleet.add_host("seed", rate_mbit=self.seed_rate_mbit)
            tracker_host = self.fleet.add_host("tracker")
            peer_hosts = [self.fleet.add_host("p%d" % i, rate_mbit=self.rate_mbit) for i in range(self.n_peers)]
            for name in self.extra_hosts:
                self.fleet.add_host(name, rate_mbit=self.rate_mbit)
            kind = NODE_KINDS[self.engine_kind]
            self.seed_node = kind(self, seed_host, os.path.join(self.workdir, "seed"), self.seed_config)
            self.seed_node.partial_dir = self.repo_dir
            self.peers = [kind(self, host, os.path.join(self.workdir, host.name), self.engine_config)
                          for host in peer_hosts]
            self.tracker = Tracker(tracker_host, os.path.join(self.workdir, "tracker"), TRACKER_PORT)
            if self.want_tracker:
                self.tracker.start()
            if self.want_web_seed:
                self.start_web_seed()
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self):
        """Stop every engine, the web seed and tracker, remove the namespaces. Idempotent."""
        nodes = ([self.seed_node] if self.seed_node else []) + self.peers + self.others
        for node in nodes:  # signal all first, then wait: engines save resume data in parallel
            if node.running:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            node.stop(timeout=10)
        if self.httpd is not None and self.httpd.poll() is None:
            self.httpd.terminate()
            try:
                self.httpd.wait(5)
            except subprocess.TimeoutExpired:
                self.httpd.kill()
        if self.tracker is not None:
            self.tracker.stop()
        if self.fleet is not None:
            self.fleet.teardown()
        shutil.rmtree(self.short_dir, ignore_errors=True)

    # -- services -----------------------------------------------------------------------------------

    @property
    def seed_host(self):
        """The repository host."""
        return self.fleet["seed"]

    @property
    def web_seed_url_base(self):
        """http://<seed>:8080/"""
        return "http://%s:%d/" % (self.seed_host.addr, HTTP_PORT)

    @property
    def httpd_stats_path(self):
        """JSON counters of the web seed."""
        return os.path.join(self.workdir, "httpd-stats.json")

    def start_web_seed(self, timeout=10):
        """Start the Range-capable HTTP server on the seed host, serving the repository dir."""
        log = open(os.path.join(self.workdir, "httpd.log"), "ab")  # pylint: disable=consider-using-with
        try:
            self.httpd = self.seed_host.popen(
                [sys.executable, HTTPD, "serve", "--root", self.repo_dir, "--bind", self.seed_host.addr,
                 "--port", str(HTTP_PORT), "--stats-file", self.httpd_stats_path],
                stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.httpd.poll() is not None:
                raise FleetError("web seed on %s exited %s" % (self.seed_host.name, self.httpd.returncode))
            if os.path.exists(self.httpd_stats_path):
                return
            time.sleep(0.05)
        raise FleetError("web seed on %s did not start within %ss" % (self.seed_host.name, timeout))

    def web_seed_stats(self):
        """The web seed's counters (bytes_served, requests, ...)."""
        try:
            with open(self.httpd_stats_path, "r", encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {"bytes_served": 0, "requests": 0}

    def dht_bootstrap_for(self, node):
        """DHT bootstrap nodes for ``node``: the seed's engine (none for the seed itself)."""
        if not self.dht_bootstrap or node is self.seed_node or self.seed_node is None:
            return []
        return [self.seed_node.listen]

    # -- images and torrents ------------------------------------------------------------------------

    def make_image(self, name, size, seed=None):
        """Create an image of ``size`` bytes in the repository dir; returns its path."""
        return make_image(os.path.join(self.repo_dir, name), size, seed)

    def make_torrent(self, image_path, piece_size=256 * 1024, web_seed=None, tracker=None):
        """Make the hybrid torrent with the collection's torrent helper (web seed and tracker of this swarm)."""
        ensure_collection_path()
        from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent  # pylint: disable=import-outside-toplevel
        name = os.path.basename(image_path)
        web_seed = self.want_web_seed if web_seed is None else web_seed
        tracker = True if tracker is None else tracker
        return make_torrent(image_path, name=name, piece_size=piece_size,
                            web_seeds=[self.web_seed_url_base + name] if web_seed else [],
                            trackers=[self.tracker.announce_url] if tracker else [])

    @staticmethod
    def key_of(torrent_data):
        """v1 info-hash (hex) of a .torrent, via the collection's parser."""
        ensure_collection_path()
        from ansible_collections.vmic.fleet.plugins.module_utils.torrent import parse_torrent  # pylint: disable=import-outside-toplevel
        return parse_torrent(torrent_data).info_hash_v1

    def approve(self, meta):
        """Whitelist the torrent's v1 and v2 info-hashes on the tracker."""
        if self.tracker is not None and self.tracker.running:
            self.tracker.add([meta.info_hash_v1, meta.info_hash_v2])

    def seed(self, meta):
        """Approve on the tracker and start the seed engine seeding the image in seed mode; returns the key."""
        self.approve(meta)
        if not self.seed_node.running:
            self.seed_node.start()
        return self.seed_node.add(meta.data, self.repo_dir, seed_mode=True)

    def extra_node(self, name, kind="bare", config=None):
        """A node of ``kind`` on one of the ``extra_hosts`` (not part of :attr:`peers`); stopped at teardown."""
        node = NODE_KINDS[kind](self, self.fleet[name], os.path.join(self.workdir, name), config)
        self.others.append(node)
        return node

    def start_peers(self, nodes=None):
        """Start the peer engines (all by default) without giving them a torrent."""
        for node in nodes if nodes is not None else self.peers:
            if not node.running and node.kind == "service":
                node.start()

    def add_everywhere(self, meta, nodes=None):
        """Start (if needed) and give every peer engine the torrent; returns the key."""
        key = None
        for node in nodes if nodes is not None else self.peers:
            if node.kind == "service" and not node.running:
                node.start()
            key = node.add(meta.data, node.partial_dir)
        return key

    # -- observation --------------------------------------------------------------------------------

    def statuses(self, key, nodes=None):
        """{node name: status dict or None} for torrent ``key``."""
        out = {}
        for node in nodes if nodes is not None else self.peers:
            try:
                out[node.name] = node.one(key) if node.running else None
            except Exception:  # pylint: disable=broad-except
                out[node.name] = None
        return out

    def wait_complete(self, key, deadline=120.0, nodes=None, poll=0.25, fail_on_error=True):
        """Wait until every node seeds ``key``; returns {name: status}. Raises FleetError with a summary
        when the deadline passes or (``fail_on_error``) a node reports an error."""
        nodes = list(nodes if nodes is not None else self.peers)
        end = time.monotonic() + deadline
        while True:
            status = self.statuses(key, nodes)
            if all(s is not None and s["state"] == "seeding" and s["total_done"] >= s["total_size"]
                   for s in status.values()):
                return status
            if fail_on_error:
                bad = {n: s["error"] for n, s in status.items() if s and s.get("error")}
                if bad:
                    raise FleetError("swarm: engines report errors: %s" % bad)
            dead = [n.name for n in nodes if not n.running]
            if dead:
                raise FleetError("swarm: engines died: %s\n%s" % (dead, "\n".join(
                    "%s: %s" % (n.name, n.log_tail(1500)) for n in nodes if not n.running)))
            if time.monotonic() > end:
                raise FleetError("swarm: not complete after %ss: %s" % (deadline, summary(status)))
            time.sleep(poll)


def summary(status):
    """One line per node: state, progress, error."""
    lines = []
    for name, st in sorted(status.items()):
        if st is None:
            lines.append("%s: no status" % name)
        else:
            lines.append("%s: %s %.0f%% peers=%s err=%s" % (name, st["state"], 100 * st["progress"], st.get("num_peers"), st.get("error")))
    return "; ".join(lines)
