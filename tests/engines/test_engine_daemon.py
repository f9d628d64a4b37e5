# -*- coding: utf-8 -*-
"""The libtorrent engine service as a real subprocess on loopback, with a real opentracker.

Engines listen on distinct 127.0.0.x addresses; libtorrent would put those peers in its "local"
peer class, so these tests also show that rate limits apply between them.
"""

import base64
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from urllib.parse import quote_from_bytes

import pytest

from daemons import DEBIAN_PYTHON, EngineProcess, engine_argv, engine_env, libtorrent_of, planned, sync_plan
from testfleet.waiting import free_port, sha512, wait_for

from ansible_collections.vmic.fleet.plugins.module_utils._engine.protocol import MAX_RESPONSE_BYTES, unix_request
from ansible_collections.vmic.fleet.plugins.module_utils.engine import STATUS_FIELDS
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import TransferFailed, retire, transfer
from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module

PIECE = 64 * 1024
SIZE = 6 * 1024 * 1024 + 4321
RATE = 1000000          # bytes/s upload cap of the rate-limited seed


@pytest.fixture(scope="module")
def image(make_image):
    """A random image, its torrent and a running tracker that knows it."""
    return make_image(SIZE, PIECE)


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
    """Send raw bytes to the engine's socket; return its one-line answer, decoded."""
    return json.loads(unix_request(path, payload, 30, MAX_RESPONSE_BYTES, "engine %s" % path, "raw request", until_newline=True))


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
    result = subprocess.run(engine_argv(other.config_path), env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=30, check=False)
    assert result.returncode == 1 and b"another engine is listening" in result.stderr


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


CHURN = ("peer.connection_attempts", "peer.incoming_connections")


def churn(engine):
    """Connections ``engine`` dialled and accepted so far (libtorrent's session counters, the ``stats`` request)."""
    counters = engine.client.request("stats")["counters"]
    return sum(counters[name] for name in CHURN)


def test_complete_seeds_do_not_redial_each_other(engines, image, tmp_path):
    """Seeds in a swarm of seeds stay quiet, yet a later leecher downloads from them.

    Two seeds hang up on each other at the extension handshake (both upload-only) before a bitfield marks either
    as a seed, so libtorrent kept them as connect candidates and redialled every min_reconnect_time (5 s): at
    100 seeding hosts that was 2 cores of connect/handshake/disconnect.  Complete torrents no longer dial out
    (after the ``seed_dial_seconds`` that follow a seed-mode add, 1 s here).
    """
    meta = image["meta"]
    key = meta.info_hash_v1
    origin = engines("origin", "127.0.0.40", seed_dial_seconds=1).start()
    origin.client.add(meta.data, image["dir"], seed_mode=True)
    nodes = []
    for n in range(2):
        nodes.append(engines("node%d" % n, "127.0.0.%d" % (41 + n), seed_dial_seconds=1).start())
        (tmp_path / str(n)).mkdir()
        nodes[-1].client.add(meta.data, str(tmp_path / str(n)))
    for node in nodes:
        wait_for("the download", lambda node=node: node.status(key)["state"] == "seeding")
    everyone = [origin] + nodes
    time.sleep(3)       # the connections of the download close, the engines stop dialling
    before = [churn(e) for e in everyone]
    time.sleep(11)      # more than twice min_reconnect_time
    assert [churn(e) for e in everyone] == before

    late = engines("late", "127.0.0.43").start()
    origin.kill(signal.SIGTERM)     # only the seeds that downloaded can serve it
    (tmp_path / "late").mkdir()
    late.client.add(meta.data, str(tmp_path / "late"))
    wait_for("the late download", lambda: late.status(key)["state"] == "seeding", timeout=30)
    assert sha512(str(tmp_path / "late" / meta.name)) == image["sha512"]
    wait_for("byte accounting", lambda: late.status(key)["bytes_from_peers"] >= SIZE)


def test_seed_added_late_reaches_the_waiting_downloaders(engines, image, tmp_path):
    """Downloaders that found only each other (and learn of new peers at their next announce, in 30 min) are dialled
    by a seed that appears later: complete torrents dial for ``seed_dial_seconds`` after a seed-mode add."""
    meta = image["meta"]
    key = meta.info_hash_v1
    waiting = []
    for n in range(2):
        waiting.append(engines("waiting%d" % n, "127.0.0.%d" % (44 + n)).start())
        (tmp_path / str(n)).mkdir()
        waiting[-1].client.add(meta.data, str(tmp_path / str(n)))
    wait_for("the downloaders to find each other", lambda: all(w.status(key)["num_peers"] >= 1 for w in waiting))
    seed = engines("seed", "127.0.0.46").start()
    seed.client.add(meta.data, image["dir"], seed_mode=True)
    for node in waiting:
        wait_for("the download", lambda node=node: node.status(key)["state"] == "seeding", timeout=20)


def test_tracker_stopped_and_seed_announced_into_empty_dht_downloads_found(engines, base, tmp_path):
    """The tracker is down and the seed announced its torrent while its DHT knew no node: the downloaders still
    find it through the DHT within seconds, not at the next announce 15 minutes later.

    The downloaders start while their bootstrap node (the seed's engine, as a site's repository is) is down, so
    their routing tables are empty and their own announces go nowhere; the seed has no bootstrap node of its own,
    announces into an empty table and dials no one (``seed_dial_seconds`` 0).  The engine asks the bootstrap nodes again while its table is empty, announces
    every torrent when it fills, and a download short of peers looks again every few seconds.
    """
    src = tmp_path / "origin"
    src.mkdir()
    path = src / "image.img"
    path.write_bytes(os.urandom(SIZE))
    dead_tracker = "http://127.0.0.1:%d/announce" % free_port("127.0.0.1")     # nothing listens there
    meta = torrent_module.make_torrent(str(path), piece_size=PIECE, trackers=[dead_tracker])
    key = meta.info_hash_v1
    ips = {"seed": "127.0.0.50", "leech0": "127.0.0.51", "leech1": "127.0.0.52"}
    endpoint = dict((name, "%s:%d" % (ip, free_port(ip))) for name, ip in ips.items())
    leechers = []
    for n in range(2):
        name = "leech%d" % n
        leechers.append(engines(name, ips[name], dht=True, dht_bootstrap_nodes=[endpoint["seed"]],
                                listen_interfaces=[endpoint[name]]).start())
        (tmp_path / name).mkdir()
        leechers[-1].client.add(meta.data, str(tmp_path / name))
    seed = engines("seed", ips["seed"], dht=True, dht_bootstrap_nodes=[], seed_dial_seconds=0,
                   listen_interfaces=[endpoint["seed"]]).start()
    seed.client.add(meta.data, str(src), seed_mode=True)
    for n, node in enumerate(leechers):
        wait_for("a download through the DHT alone", lambda node=node: node.status(key)["state"] == "seeding", timeout=120)
        assert sha512(str(tmp_path / ("leech%d" % n) / meta.name)) == sha512(str(path))


def dht_counter(engine, name):
    """libtorrent's session counter ``dht.<name>`` of ``engine`` (the ``stats`` request)."""
    return engine.client.request("stats")["counters"]["dht." + name]


def test_dht_announce_storm_progressing_download_does_not_ask_dht_again(engines, image, tmp_path):
    """A download that receives data does not look its torrent up in the DHT again, even below its peer limit.

    At 450 hosts every download of a working swarm sat one peer below ``max_download_peers`` (peer rotation
    keeps it there) and sent an announce traversal every 10 s: about 1000 DHT messages each, a storm of
    packets on the site's network.  Here a download with one peer (limit 5), slowed by the seed's upload cap,
    runs for about 30 s with a DHT that knows the seed.  After libtorrent's own announces of a new torrent
    (the first seconds), it announces to no one for more than ``DHT_SECONDS``: only an announce sends
    announce_peer (libtorrent's routing-table upkeep sends get_peers of its own).
    """
    meta = image["meta"]
    key = meta.info_hash_v1
    endpoint = dict((name, "%s:%d" % (ip, free_port(ip))) for name, ip in (("seed", "127.0.0.53"), ("leech", "127.0.0.54")))
    seed = engines("seed", "127.0.0.53", dht=True, dht_bootstrap_nodes=[], upload_rate_limit=SIZE // 30,
                   listen_interfaces=[endpoint["seed"]]).start()
    seed.client.add(meta.data, image["dir"], seed_mode=True)
    leech = engines("leech", "127.0.0.54", dht=True, dht_bootstrap_nodes=[endpoint["seed"]],
                    listen_interfaces=[endpoint["leech"]]).start()
    # the engine announces every torrent once when its routing table first fills (within DHT_SECONDS of its start)
    wait_for("an answer from the DHT node", lambda: dht_counter(leech, "dht_messages_in") >= 1, timeout=30)
    time.sleep(11)
    leech.client.add(meta.data, str(tmp_path))
    wait_for("data from the seed", lambda: leech.status(key)["total_done"] > 0, timeout=30)
    time.sleep(7)
    before = dht_counter(leech, "dht_announce_peer_out")
    deadline = time.time() + 13
    while time.time() < deadline:
        status = leech.status(key)
        assert status["state"] != "seeding", "the download ended before the end of the window: %r" % status
        assert status["num_peers"] < 5
        time.sleep(0.5)
    assert dht_counter(leech, "dht_announce_peer_out") == before
    wait_for("the download", lambda: leech.status(key)["state"] == "seeding", timeout=60)
    assert sha512(str(tmp_path / meta.name)) == image["sha512"]


# --------------------------------------------------------------------------- image_sync's transfer and retire on this engine

IMAGE_A = "aa000000-0000-4000-8000-00000000000a"
IMAGE_B = "bb000000-0000-4000-8000-00000000000b"


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
    liar = planned(dict(image, sha512="0" * 128), torrent_url, "cc000000-0000-4000-8000-00000000000c", "1")
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


def test_start_lingers_until_the_download_finished(engines, image, torrent_url, tmp_path):
    """rollout.yml's download step with ``linger``: it returns as soon as the real engine finished the download (not
    after the whole linger) and reports it ``downloaded`` with every byte, so fleet_wait counts the host done without
    reading it; without linger it returns while the (slowed) download still runs."""
    meta = image["meta"]
    seed = engines("seed", "127.0.0.26", upload_rate_limit=SIZE // 3).start()
    seed.client.add(meta.data, image["dir"], seed_mode=True)
    node = engines("node", "127.0.0.27").start()
    store = ImageStore(str(tmp_path / "store"))
    t0 = time.monotonic()
    results = transfer(sync_plan([planned(image, torrent_url, IMAGE_A, "1")]), store, node.client, torrent_module, time.time() + 120,
                       poll=0.2, commit=False, wait=False, allow_http=True, linger=60)
    assert time.monotonic() - t0 < 30
    assert [(item["action"], item["total_done"], item["size"]) for item in results] == [("downloaded", SIZE, SIZE)]

    other = engines("other", "127.0.0.28").start()
    store = ImageStore(str(tmp_path / "other"))
    results = transfer(sync_plan([planned(image, torrent_url, IMAGE_A, "1")]), store, other.client, torrent_module, time.time() + 120,
                       poll=0.2, commit=False, wait=False, allow_http=True)
    assert [item["action"] for item in results] == ["downloading"] and results[0]["total_done"] < SIZE


def test_idle_engine_wakes_for_requests_alerts_and_signals(engines, image, tmp_path):
    """An engine with nothing to do sleeps until a client, libtorrent or a signal wakes it.

    Both engines are idle (periodic work every 30 s) when the download is asked for; the move and the removal
    return only on libtorrent's alerts, and a request gives up after 25 s: they finish because the alert wakes
    the engine, not its next periodic work.  SIGTERM stops it at once (EngineProcess waits 20 s).
    """
    meta = image["meta"]
    seed = engines("seed", "127.0.0.28", log_level="DEBUG").start()
    seed.client.add(meta.data, image["dir"], seed_mode=True)
    node = engines("node", "127.0.0.29", log_level="DEBUG").start()
    wait_for("both engines idle", lambda: "engine idle" in seed.log() and "engine idle" in node.log())
    incoming, store = tmp_path / "incoming", tmp_path / "store"
    incoming.mkdir()
    store.mkdir()
    key = node.client.add(meta.data, str(incoming))
    wait_for("the download", lambda: node.status(key)["state"] == "seeding")
    assert sha512(str(incoming / meta.name)) == image["sha512"]
    assert node.status(key)["bytes_from_peers"] >= SIZE
    wait_for("the node idle again", lambda: node.log().count("engine idle") >= 2)
    node.client.move(key, str(store))
    assert node.status(key)["save_dir"] == str(store) and sha512(str(store / meta.name)) == image["sha512"]
    node.client.remove(key)
    assert node.client.status() == []
    node.kill(signal.SIGTERM)
    assert node.proc.returncode == 0 and "engine stopped" in node.log()


DEBIAN_LIBTORRENT = libtorrent_of(DEBIAN_PYTHON)
ALERT_PIPE_CHECK = """
import os, select, libtorrent as lt
read_end, write_end = os.pipe()
os.set_blocking(write_end, False)
session = lt.session({"listen_interfaces": "127.0.0.30:0", "enable_dht": False})
session.set_alert_fd(write_end)
session.pop_alerts()
session.post_session_stats()
print(lt.__version__, bool(select.select([read_end], [], [], 20)[0]), len(session.pop_alerts()) > 0)
"""


@pytest.mark.parametrize("python", [sys.executable, DEBIAN_PYTHON])
def test_libtorrent_wakes_the_engine_through_its_alert_pipe(python):
    """The engine sleeps on the pipe that libtorrent writes to when an alert is posted (set_alert_fd), on both libtorrents."""
    # tests/tools/install-deps.sh installs Debian's python3-libtorrent: without it this is a setup failure, not a skip
    assert libtorrent_of(python) is not None, "no libtorrent for %s (Debian: apt-get install python3-libtorrent)" % python
    result = subprocess.run([python, "-c", ALERT_PIPE_CHECK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split()[1:] == ["True", "True"], result.stdout


def test_debian_libtorrent_seeds_to_this_libtorrent_and_resumes_its_state(engines, image, tmp_path):
    """The fleet runs Debian 12's python3-libtorrent (2.0.8), the tests the venv's wheel (2.1): an engine on each
    exchange the image, and the state directory one wrote is resumed by the other."""
    assert DEBIAN_LIBTORRENT is not None, "no libtorrent for %s (Debian: apt-get install python3-libtorrent)" % DEBIAN_PYTHON
    meta = image["meta"]
    seed = engines("seed", "127.0.0.26", python=DEBIAN_PYTHON).start()
    assert seed.client.ping()["version"] == DEBIAN_LIBTORRENT
    leech = engines("leech", "127.0.0.27").start()
    key = seed.client.add(meta.data, image["dir"], seed_mode=True)
    leech.client.add(meta.data, str(tmp_path))
    wait_for("the download", lambda: leech.status(key)["state"] == "seeding")
    assert sha512(str(tmp_path / meta.name)) == image["sha512"]
    leech.kill(signal.SIGTERM)
    leech.python = DEBIAN_PYTHON
    leech.start()
    assert leech.client.ping()["version"] == DEBIAN_LIBTORRENT
    restored = wait_for("the restored torrent", lambda: [s for s in leech.client.status(key) if s["state"] == "seeding"])[0]
    assert restored["total_done"] == SIZE and restored["save_dir"] == str(tmp_path)
