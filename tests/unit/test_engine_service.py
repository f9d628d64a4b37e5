# -*- coding: utf-8 -*-
"""The libtorrent engine service as a real subprocess on loopback, with a real opentracker.

Engines listen on distinct 127.0.0.x addresses; libtorrent would put those peers in its "local"
peer class, so these tests also show that rate limits apply between them.
"""

import base64
import functools
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote_from_bytes

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.engine import STATUS_FIELDS, LibtorrentEngineClient
from ansible_collections.vmic.fleet.plugins.module_utils.engine_service import main, validate_config
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import PlannedImage, SyncPlan, TransferFailed, retire, transfer
from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent, v2_truncated
from waiting import free_port, sha512, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".tmp", "collections")
ENGINE_MODULE = "ansible_collections.vmic.fleet.plugins.module_utils.engine_service"
PIECE = 64 * 1024
SIZE = 6 * 1024 * 1024 + 4321
RATE = 1000000          # bytes/s upload cap of the rate-limited seed


class EngineProcess(object):
    """One engine service subprocess with its own socket, state dir and address."""

    def __init__(self, base, name, ip, **config):
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "engine.json")
        self.log_path = os.path.join(self.dir, "engine.log")
        if "socket" not in config:
            # unix socket paths are limited to about 100 bytes: keep them out of pytest's long paths
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
        env = dict(os.environ, PYTHONPATH=COLLECTIONS)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", ENGINE_MODULE, "--config", self.config_path],
                                         stdout=log, stderr=log, env=env)
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


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(tmp_path_factory.mktemp("engine"))


@pytest.fixture(scope="module")
def tracker(base):
    """A closed opentracker on 127.0.0.1; returns (announce URL, whitelist adder)."""
    root = os.path.join(base, "tracker")
    os.makedirs(root)
    os.chmod(root, 0o755)
    port = free_port("127.0.0.1")
    holder = {}

    def start(torrents):
        with open(os.path.join(root, "whitelist"), "w") as handle:
            for meta in torrents:
                handle.write("%s\n%s\n" % (meta.info_hash_v1, v2_truncated(meta.info_hash_v2)))
        os.chmod(os.path.join(root, "whitelist"), 0o644)
        holder["proc"] = subprocess.Popen(["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port),
                                           "-d", root, "-w", "/whitelist"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("opentracker", lambda: _connects("127.0.0.1", port), timeout=10)

    yield "http://127.0.0.1:%d/announce" % port, start
    if "proc" in holder:
        holder["proc"].terminate()
        holder["proc"].wait(timeout=10)


def _connects(ip, port):
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def image(base, tracker):
    """A random image, its torrent and a running tracker that knows it."""
    announce, start_tracker = tracker
    src = os.path.join(base, "origin")
    os.makedirs(src)
    path = os.path.join(src, "cirros.img")
    with open(path, "wb") as handle:
        handle.write(os.urandom(SIZE))
    meta = make_torrent(path, piece_size=PIECE, trackers=[announce])
    start_tracker([meta])
    return {"path": path, "dir": src, "meta": meta, "sha512": sha512(path), "announce": announce}


@pytest.fixture
def engines(base, request):
    """Factory of engine processes, all stopped at the end of the test."""
    started = []

    def make(name, ip, **config):
        engine = EngineProcess(os.path.join(base, request.node.name), name, ip, **config)
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.cleanup()


def test_seed_mode_seed_and_leecher_download(engines, image, tmp_path):
    meta = image["meta"]
    # capped so that the download lives through a few of the engine's once-a-second samples
    seed = engines("seed", "127.0.0.2", upload_rate_limit=4 * RATE).start()
    leech = engines("leech", "127.0.0.3").start()
    key = seed.client.add(meta.data, image["dir"], seed_mode=True)
    assert key == meta.info_hash_v1
    assert seed.status(key)["state"] == "seeding"       # seed mode: no hashing before seeding
    target = tmp_path / "download"
    target.mkdir()
    assert leech.client.add(meta.data, str(target)) == key
    assert leech.client.add(meta.data, str(target)) == key      # idempotent
    done = wait_for("the download", lambda: leech.status(key)["state"] == "seeding" and leech.status(key))
    assert sha512(str(target / meta.name)) == image["sha512"]

    assert set(done) == set(STATUS_FIELDS)
    assert done["info_hash_v1"] == meta.info_hash_v1 and done["info_hash_v2"] == meta.info_hash_v2
    assert done["name"] == meta.name and done["save_dir"] == str(target)
    assert done["progress"] == 1.0 and done["total_size"] == SIZE and done["total_done"] == SIZE
    assert done["hashfail_count"] == 0 and done["banned_peers"] == 0 and done["error"] is None
    assert done["completed_at"] >= done["added_at"] > 0
    assert done["bytes_from_web_seed"] == 0
    # every byte came from a peer that was a seed (per-second sampling may trail a little)
    wait_for("byte accounting", lambda: leech.status(key)["bytes_from_peers"] >= SIZE)
    done = leech.status(key)
    assert done["bytes_from_seeds"] == done["bytes_from_peers"]
    assert SIZE <= done["bytes_from_peers"] <= SIZE + 4 * PIECE

    seeding = seed.status(key)
    assert seeding["state"] == "seeding" and seeding["total_done"] == SIZE and seeding["bytes_from_peers"] == 0
    wait_for("the seed's upload counter", lambda: seed.status(key)["upload_total"] >= SIZE)


def test_rate_limit_between_loopback_peers_and_resume_after_sigkill(engines, image, tmp_path):
    meta = image["meta"]
    seed = engines("seed", "127.0.0.4", upload_rate_limit=RATE).start()
    leech = engines("leech", "127.0.0.5").start()
    key = seed.client.add(meta.data, image["dir"], seed_mode=True)
    target = tmp_path / "download"
    target.mkdir()
    started = time.time()
    leech.client.add(meta.data, str(target))

    # 1. the cap holds although both peers are on loopback ("local" class in libtorrent's default)
    time.sleep(2.0)
    first = leech.status(key)
    elapsed = time.time() - started
    assert first["total_done"] < SIZE, "unlimited transfer: loopback peers ignore the upload cap"
    assert first["total_done"] <= 2 * RATE * elapsed + 8 * PIECE

    # 2. SIGKILL in the middle of the download, once resume data covers some pieces
    resume = os.path.join(leech.dir, "state", key + ".resume")
    wait_for("some progress and resume data", lambda: leech.status(key)["total_done"] >= SIZE // 3 and os.path.exists(resume))
    time.sleep(1.5)
    before = leech.status(key)
    assert before["total_done"] < SIZE
    leech.kill(signal.SIGKILL)

    # 3. restart: verified pieces are kept, only the rest is downloaded again
    leech.start()
    restarted = wait_for("the restarted torrent to finish checking",
                         lambda: [s for s in leech.client.status(key) if s["state"] != "checking"])[0]
    kept = restarted["total_done"]
    counted_at_restart = restarted["bytes_from_peers"]
    assert kept > 0, "no verified piece survived the SIGKILL"
    done = wait_for("the resumed download", lambda: leech.status(key)["state"] == "seeding" and leech.status(key))
    assert sha512(str(target / meta.name)) == image["sha512"]
    # total_done counts verified pieces only; blocks of unfinished pieces also survive in the resume
    # data, so up to a few pieces less than SIZE - kept may have to travel again.
    wait_for("byte accounting", lambda: leech.status(key)["bytes_from_peers"] >= counted_at_restart + SIZE - kept - 4 * PIECE)
    after_restart = leech.status(key)["bytes_from_peers"] - counted_at_restart
    assert after_restart < SIZE
    assert after_restart <= SIZE - kept + 8 * PIECE
    assert done["total_done"] == SIZE


def test_move_restart_and_remove(engines, image, tmp_path):
    meta = image["meta"]
    incoming = tmp_path / "incoming"
    store = tmp_path / "store"
    incoming.mkdir()
    store.mkdir()
    shutil.copy(image["path"], str(incoming / meta.name))
    engine = engines("host", "127.0.0.6").start()
    key = engine.client.add(meta.data, str(incoming), seed_mode=True)

    with pytest.raises(EngineError, match="not an existing directory"):
        engine.client.move(key, str(tmp_path / "missing"))
    engine.client.move(key, str(incoming))                     # same directory: nothing to do
    inode = os.stat(str(incoming / meta.name)).st_ino
    engine.client.move(key, str(store))
    assert not (incoming / meta.name).exists()
    assert os.stat(str(store / meta.name)).st_ino == inode    # a rename, not a copy
    assert engine.status(key)["save_dir"] == str(store)
    with open(os.path.join(engine.dir, "state", key + ".state.json")) as handle:
        assert json.load(handle)["save_dir"] == str(store)

    # a clean restart finds the torrent where it was moved, complete
    engine.kill(signal.SIGTERM)
    assert engine.proc.returncode == 0
    engine.start()
    moved = wait_for("the restored torrent", lambda: [s for s in engine.client.status(key) if s["state"] == "seeding"])[0]
    assert moved["save_dir"] == str(store) and moved["total_done"] == SIZE

    # remove keeps the data unless asked to delete it
    engine.client.remove(key)
    assert engine.client.status(key) == []
    assert engine.client.status() == []
    assert sha512(str(store / meta.name)) == image["sha512"]
    assert not [name for name in os.listdir(os.path.join(engine.dir, "state")) if name.startswith(key)]
    with pytest.raises(EngineError, match="not in the engine"):
        engine.client.remove(key)
    engine.client.add(meta.data, str(store), seed_mode=True)
    engine.client.remove(key, delete_files=True)
    assert not (store / meta.name).exists()


def raw_request(path, payload):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    try:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    return json.loads(reply.decode("utf-8"))


def test_protocol_validates_requests(engines, image, tmp_path):
    engine = engines("proto", "127.0.0.7").start()
    assert stat.S_IMODE(os.stat(engine.socket).st_mode) == 0o600
    key = image["meta"].info_hash_v1
    good = base64.b64encode(image["meta"].data).decode("ascii")
    cases = [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"op": "explode"}\n', "unknown op"),
        (b'{"op": "status", "key": "ABC"}\n', "not a v1 info-hash"),
        (b'{"op": "status", "extra": 1}\n', "unknown fields"),
        (b'{"op": "remove"}\n', "missing fields"),
        (b'{"op": "move", "key": "%s", "dest_dir": "relative"}\n' % key.encode(), "not an absolute path"),
        (b'{"op": "add", "torrent": "!!!", "save_dir": "/tmp"}\n', "base64"),
        (b'{"op": "add", "torrent": "%s", "save_dir": "/tmp"}\n' % base64.b64encode(b"garbage"), "bencode"),
        (b'{"op": "add", "torrent": "%s", "save_dir": "tmp"}\n' % good.encode(), "absolute path"),
        (b'{"op": "add", "torrent": "%s", "save_dir": "/tmp", "seed_mode": "yes"}\n' % good.encode(), "boolean"),
        (b'{"op": "add", "torrent": "%s", "save_dir": "%s", "seed_mode": true}\n' % (good.encode(), str(tmp_path).encode()),
         "seed_mode needs"),
    ]
    for payload, reason in cases:
        response = raw_request(engine.socket, payload)
        assert response["ok"] is False and reason in response["error"], (payload[:80], response)
    oversize = raw_request(engine.socket, b'{"op": "ping", "pad": "' + b"x" * (16 * 1024 * 1024) + b'"}\n')
    assert oversize["ok"] is False and "larger than" in oversize["error"]
    assert raw_request(engine.socket, b'{"op": "ping"}\n')["ok"] is True
    assert engine.client.status(key) == []
    assert os.listdir(os.path.join(engine.dir, "state")) == []     # refused adds leave nothing behind

    # a second engine on the same socket refuses to start
    other = EngineProcess(os.path.join(engine.dir, ".."), "proto2", "127.0.0.8", socket=engine.socket)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    result = subprocess.run([sys.executable, "-m", ENGINE_MODULE, "--config", other.config_path], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, check=False)
    assert result.returncode == 1 and b"another engine is listening" in result.stderr


def test_config_is_validated(tmp_path):
    assert validate_config({})["max_download_peers"] == 5
    for raw, reason in [
        ({"bogus": 1}, "unknown keys"),
        ({"socket": "relative.sock"}, "absolute"),
        ({"dht": "yes"}, "dht"),
        ({"max_upload_slots": 0}, "at least 1"),
        ({"upload_rate_limit": -1}, "out of range"),
        ({"listen_interfaces": ["0.0.0.0"]}, "host:port"),
        ({"dht_bootstrap_nodes": ["a:1,b:2"]}, "host:port"),
        ([], "not a JSON object"),
    ]:
        with pytest.raises(EngineError, match=reason):
            validate_config(raw)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["--config", str(bad)]) == 1


# --------------------------------------------------------------------------- a peer that sends bad data


class BadPeer(object):
    """A BitTorrent v1 peer that has every piece and answers every request with random bytes."""

    def __init__(self, ip, meta, announce):
        self.meta = meta
        self.info_hash = bytes.fromhex(meta.info_hash_v1)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((ip, 0))
        self.listener.listen(8)
        self.listener.settimeout(0.5)
        self.ip, self.port = self.listener.getsockname()
        self.announce = announce
        self.served = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self):
        self.thread.start()
        host, rest = self.announce[len("http://"):].split("/", 1)
        query = "info_hash=%s&peer_id=%s&port=%d&uploaded=0&downloaded=0&left=0&event=started&compact=1" % (
            quote_from_bytes(self.info_hash), quote_from_bytes(b"-XX0001-" + os.urandom(6).hex()[:12].encode()), self.port)
        connection = HTTPConnection(host, timeout=10, source_address=(self.ip, 0))
        connection.request("GET", "/%s?%s" % (rest, query))
        assert connection.getresponse().status == 200
        connection.close()
        return self

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _addr = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._peer, args=(conn,), daemon=True).start()

    def _peer(self, conn):
        conn.settimeout(10)
        try:
            handshake = self._read(conn, 68)
            if handshake[28:48] != self.info_hash:
                return
            conn.sendall(b"\x13BitTorrent protocol" + b"\0" * 8 + self.info_hash + b"-XX0001-" + os.urandom(12))
            pieces = (self.meta.size + self.meta.piece_size - 1) // self.meta.piece_size
            bitfield = bytearray((pieces + 7) // 8)
            for index in range(pieces):
                bitfield[index // 8] |= 0x80 >> (index % 8)
            conn.sendall(struct.pack(">IB", 1 + len(bitfield), 5) + bytes(bitfield) + struct.pack(">IB", 1, 1))
            while not self.stopping.is_set():
                length = struct.unpack(">I", self._read(conn, 4))[0]
                if length == 0:
                    continue
                message = self._read(conn, length)
                if message[0] == 6:                              # request(index, begin, length)
                    index, begin, size = struct.unpack(">III", message[1:13])
                    conn.sendall(struct.pack(">IBII", 9 + size, 7, index, begin) + os.urandom(size))
                    self.served += size
        except (OSError, EOFError, struct.error):
            pass
        finally:
            conn.close()

    @staticmethod
    def _read(conn, count):
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            if not chunk:
                raise EOFError()
            data += chunk
        return data


def test_peer_sending_bad_data_is_banned(engines, image, tmp_path):
    meta = image["meta"]
    bad = BadPeer("127.0.0.9", meta, image["announce"]).start()
    try:
        leech = engines("victim", "127.0.0.10").start()
        key = leech.client.add(meta.data, str(tmp_path))
        banned = wait_for("the bad peer to be banned", lambda: leech.status(key)["banned_peers"] >= 1 and leech.status(key))
        assert banned["hashfail_count"] >= 1
        assert banned["total_done"] == 0
        assert bad.served > 0
    finally:
        bad.stop()


def test_downloader_is_connected_to_at_most_max_download_peers(engines, image, tmp_path):
    meta = image["meta"]
    key = meta.info_hash_v1
    seeds = [engines("seed%d" % n, "127.0.0.%d" % (11 + n), upload_rate_limit=RATE).start() for n in range(3)]
    for seed in seeds:
        seed.client.add(meta.data, image["dir"], seed_mode=True)
    leech = engines("leech", "127.0.0.15", max_download_peers=2).start()
    leech.client.add(meta.data, str(tmp_path))
    most = 0
    deadline = time.time() + 60
    while True:
        status = leech.status(key)
        most = max(most, status["num_peers"])
        assert status["num_peers"] <= 2, status
        if status["state"] == "seeding":
            break
        assert time.time() < deadline, "download did not finish"
        time.sleep(0.2)
    assert most == 2
    assert sha512(str(tmp_path / meta.name)) == image["sha512"]


# --------------------------------------------------------------------------- image_sync's transfer and retire on this engine

LIST = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"
IMAGE_A = "aa000000-0000-4000-8000-00000000000a"
IMAGE_B = "bb000000-0000-4000-8000-00000000000b"


@pytest.fixture(scope="module")
def torrent_url(base, image):
    """The image's .torrent served over HTTP on 127.0.0.1 (a list's vmic:torrent)."""
    served = os.path.join(base, "served")
    os.makedirs(served)
    with open(os.path.join(served, "cirros.img.torrent"), "wb") as handle:
        handle.write(image["meta"].data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/cirros.img.torrent" % server.server_address[1]
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


def planned(image, torrent_url, identifier, version):
    meta = image["meta"]
    return PlannedImage({"dc:identifier": identifier, "hv:version": version, "dc:title": "Cirros", "hv:size": meta.size,
                         "sl:checksum:sha512": image["sha512"], "hv:uri": "https://repo.example/" + meta.name,
                         "vmic:torrent": torrent_url, "vmic:torrent_sha256": meta.sha256, "vmic:btih_v1": meta.info_hash_v1,
                         "vmic:btih_v2": meta.info_hash_v2}, LIST, "good")


def sync_plan(add=(), retire=()):
    plan = SyncPlan()
    plan.add, plan.retire = list(add), list(retire)
    return plan


def seeded(engines, image, ip):
    seed = engines("seed", ip).start()
    seed.client.add(image["meta"].data, image["dir"], seed_mode=True)
    return seed


def test_reendorsed_same_bytes_keeps_committed_image(engines, image, torrent_url, tmp_path):
    """A new hv:version of unchanged bytes: the engine already holds the torrent. Before, the empty new partial
    failed its check and the engine was told to delete the torrent's data: the committed, in-use image."""
    meta = image["meta"]
    seeded(engines, image, "127.0.0.20")
    node = engines("node", "127.0.0.21").start()
    store = ImageStore(str(tmp_path / "store"), str(tmp_path / "archive"))
    first = transfer(sync_plan([planned(image, torrent_url, IMAGE_A, "1")]), store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True)
    assert [item["action"] for item in first] == ["added"]
    v1 = store.find(IMAGE_A, "1")
    assert node.status(meta.info_hash_v1)["save_dir"] == os.path.dirname(v1.path)
    assert json.load(open(os.path.join(store.store_dir, IMAGE_A, "1.json")))["endorser"] == "good"

    # v2 lists the same bytes; a VM holds v1 open meanwhile
    with open(v1.path, "rb") as vm:
        plan = sync_plan([planned(image, torrent_url, IMAGE_A, "2")], [v1])
        second = transfer(plan, store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True)
        assert [item["action"] for item in second] == ["added (same bytes as %s 1, no transfer)" % IMAGE_A]
        v2 = store.find(IMAGE_A, "2")
        assert os.path.samefile(v1.path, v2.path) and sha512(v2.path) == image["sha512"]
        retired, in_use = retire(plan, store, node.client, "archive")
        assert retired == [] and [item["version"] for item in in_use] == ["1"]
        assert sha512(v1.path) == image["sha512"] and vm.read(16)
    # the engine seeds the torrent from v2 now; v1 can go
    status = wait_for("seeding from v2", lambda: [s for s in node.client.status(meta.info_hash_v1) if s["state"] == "seeding"])[0]
    assert status["save_dir"] == os.path.dirname(v2.path)
    retired, in_use = retire(sync_plan(retire=[store.find(IMAGE_A, "1")]), store, node.client, "archive")
    assert [item["version"] for item in retired] == ["1"] and in_use == []
    assert [s.version for s in store.images()] == ["2"] and sha512(v2.path) == image["sha512"]
    assert sha512(str(tmp_path / "archive" / IMAGE_A / "1" / meta.name)) == image["sha512"]
    assert node.status(meta.info_hash_v1)["save_dir"] == os.path.dirname(v2.path)

    # withdrawn: the retired image is no longer seeded
    retired, _in_use = retire(sync_plan(retire=[store.find(IMAGE_A, "2")]), store, node.client, "delete")
    assert [item["action"] for item in retired] == ["retired (delete)"]
    assert node.client.status(meta.info_hash_v1) == [] and store.images() == []


def test_same_file_under_two_identifiers_one_transfer_both_committed(engines, image, torrent_url, tmp_path):
    seeded(engines, image, "127.0.0.22")
    node = engines("node", "127.0.0.23").start()
    store = ImageStore(str(tmp_path / "store"))
    results = transfer(sync_plan([planned(image, torrent_url, IMAGE_A, "1"), planned(image, torrent_url, IMAGE_B, "7")]),
                       store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True)
    assert [item["action"] for item in results] == ["added", "added (same bytes as %s 1, no transfer)" % IMAGE_A]
    a, b = store.find(IMAGE_A, "1"), store.find(IMAGE_B, "7")
    assert os.path.samefile(a.path, b.path) and sha512(b.path) == image["sha512"]
    assert [s["save_dir"] for s in node.client.status()] == [os.path.dirname(a.path)]

    # a list that gives the same torrent other bytes: the engine holds it elsewhere, so nothing is downloaded,
    # nothing deleted, and the engine keeps seeding where it was
    liar = planned(image, torrent_url, "cc000000-0000-4000-8000-00000000000c", "1")
    liar.sha512 = liar.image["sl:checksum:sha512"] = "0" * 128
    with pytest.raises(TransferFailed, match="the engine already holds its torrent .* nothing was downloaded or deleted"):
        transfer(sync_plan([liar]), store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True)
    assert sha512(a.path) == image["sha512"] and [s.identifier for s in store.images()] == [IMAGE_A, IMAGE_B]
    assert [s["save_dir"] for s in node.client.status()] == [os.path.dirname(a.path)]


def test_download_withdrawn_before_activation_discarded_and_not_seeded(engines, image, torrent_url, tmp_path):
    meta = image["meta"]
    seeded(engines, image, "127.0.0.24")
    node = engines("node", "127.0.0.25").start()
    store = ImageStore(str(tmp_path / "store"))
    results = transfer(sync_plan([planned(image, torrent_url, IMAGE_A, "1")]), store, node.client, torrent_module, time.time() + 60,
                       poll=0.2, commit=False, allow_http=True)
    partial = store.partial_dir(IMAGE_A, "1")
    assert [item["action"] for item in results] == ["downloaded"] and os.path.isfile(os.path.join(partial, meta.name))
    # the activation run no longer lists it
    retired, _in_use = retire(sync_plan(), store, node.client, "archive")
    assert retired == [{"identifier": IMAGE_A, "version": "1", "action": "discarded download"}]
    assert node.client.status() == [] and not os.path.exists(partial) and store.images() == []
    assert sha512(image["path"]) == image["sha512"]


def test_slow_engine_answer_refused(tmp_path):
    """A socket that answers one byte at a time cannot hold image_sync: the request has a total deadline."""
    path = str(tmp_path / "slow.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    stop = threading.Event()

    def trickle():
        conn, _addr = server.accept()
        try:
            conn.recv(65536)
            for byte in b'{"ok": true, "torrents": []}' * 100:
                if stop.is_set():
                    break
                conn.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(EngineError, match="no answer to status within 2 s"):
            LibtorrentEngineClient(path, timeout=2).status()
        assert time.monotonic() - started < 4
    finally:
        stop.set()
        thread.join(5)
        server.close()
