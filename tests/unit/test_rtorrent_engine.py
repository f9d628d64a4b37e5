# -*- coding: utf-8 -*-
"""The rtorrent engine client against real rtorrent 0.9 processes on loopback, with a real opentracker.

Each rtorrent runs headless (``system.daemon.set = true``) with its own session dir, download dir,
SCGI unix socket and 127.0.0.x address; everything lives in pytest's temp dirs and is stopped at the end.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.engine import STATUS_FIELDS
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, LimitError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import PlannedImage, SyncPlan, retire, transfer
from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.rtorrent_engine import RtorrentEngineClient, ScgiTransport, with_fast_resume
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent
from waiting import free_port, sha512, wait_for

PIECE = 64 * 1024
SIZE = 3 * 1024 * 1024 + 4321
RTORRENT = shutil.which("rtorrent") or "/usr/bin/rtorrent"
OPENTRACKER = shutil.which("opentracker") or "/usr/bin/opentracker"


class RtorrentProcess(object):
    """One headless rtorrent with its own session, download dir, socket and address."""

    def __init__(self, base, name, ip, user=None):
        self.dir = os.path.join(base, name)
        self.user = user
        self.session = os.path.join(self.dir, "session")
        self.downloads = os.path.join(self.dir, "downloads")
        for path in (self.session, self.downloads):
            os.makedirs(path)
        # unix socket paths are limited to about 100 bytes: keep them out of pytest's long paths
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


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(tmp_path_factory.mktemp("rtorrent"))


@pytest.fixture(scope="module")
def image(base):
    """A random image, its hybrid torrent, and a closed opentracker on 127.0.0.1 that tracks its v1 swarm."""
    root = os.path.join(base, "tracker")
    os.makedirs(root)
    os.chmod(root, 0o755)
    port = free_port("127.0.0.1")
    announce = "http://127.0.0.1:%d/announce" % port
    src = os.path.join(base, "origin")
    os.makedirs(src)
    path = os.path.join(src, "cirros.img")
    with open(path, "wb") as handle:
        handle.write(os.urandom(SIZE))
    meta = make_torrent(path, piece_size=PIECE, trackers=[announce])
    with open(os.path.join(root, "whitelist"), "w") as handle:
        handle.write("%s\n" % meta.info_hash_v1)
    os.chmod(os.path.join(root, "whitelist"), 0o644)
    tracker = subprocess.Popen([OPENTRACKER, "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-d", root, "-w", "/whitelist"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("opentracker", lambda: _connects("127.0.0.1", port), timeout=10)
        yield {"path": path, "dir": src, "meta": meta, "sha512": sha512(path)}
    finally:
        tracker.terminate()
        tracker.wait(timeout=10)


def _connects(ip, port):
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def rtorrents(base, request):
    """Factory of rtorrent processes, all stopped at the end of the test."""
    started = []

    def make(name, ip, user=None, where=None):
        proc = RtorrentProcess(where or os.path.join(base, request.node.name), name, ip, user=user)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.cleanup()


@pytest.fixture
def open_dir():
    """A directory that every user can reach (pytest's own are root's alone): for an rtorrent of another user."""
    path = tempfile.mkdtemp(prefix="vmic-rt-open-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def torrent_server(image):
    """The image's .torrent over HTTP on 127.0.0.1 (the list's vmic:torrent); yields its URL."""
    data = image["meta"].data

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # pylint: disable=invalid-name
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # pylint: disable=arguments-differ
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/%s.torrent" % (server.server_address[1], image["meta"].name)
    server.shutdown()
    server.server_close()


def test_hybrid_torrent_seeded_in_seed_mode_and_downloaded_moved_removed(rtorrents, image, tmp_path):
    meta = image["meta"]
    seed = rtorrents("seed", "127.0.0.2")
    leech = rtorrents("leech", "127.0.0.3")
    assert seed.client.ping()["client_version"].startswith("0.9")

    key = seed.client.add(meta.data, image["dir"], seed_mode=True)
    assert key == meta.info_hash_v1                      # rtorrent's upper-case d.hash, normalised
    status = seed.status(key)
    assert status["state"] == "seeding"
    assert status["info_hash_v2"] == meta.info_hash_v2

    partial = tmp_path / "partial"
    partial.mkdir()
    assert leech.client.add(meta.data, str(partial)) == key
    assert leech.client.add(meta.data, str(tmp_path)) == key      # already there: same key, nothing changes
    assert leech.client.keys() == [key]
    done = wait_for("download", lambda: leech.status(key)["state"] == "seeding" and leech.status(key), timeout=60)

    assert sha512(str(partial / meta.name)) == image["sha512"]
    assert set(done) == set(STATUS_FIELDS)
    assert done["name"] == meta.name and done["save_dir"] == str(partial)
    assert done["total_size"] == done["total_done"] == meta.size and done["progress"] == 1.0
    assert done["bytes_from_peers"] >= meta.size and done["bytes_from_web_seed"] == 0
    assert done["error"] is None and done["hashfail_count"] == 0
    assert done["completed_at"] >= int(done["added_at"]) > 0       # rtorrent keeps whole seconds
    assert seed.status(key)["upload_total"] >= meta.size

    store = tmp_path / "store"
    store.mkdir()
    leech.client.move(key, str(store), str(partial), meta.name)
    assert (store / meta.name).is_file() and not (partial / meta.name).exists()
    moved = leech.status(key)
    assert moved["save_dir"] == str(store) and moved["state"] == "seeding" and moved["total_done"] == meta.size
    assert sha512(str(store / meta.name)) == image["sha512"]

    leech.client.remove(key, delete_files=True, save_dir=str(store), name=meta.name)
    assert leech.client.status(key) == [] and leech.client.keys() == []
    assert not (store / meta.name).exists()
    leech.client.remove(key)                              # absent: nothing to do
    seed.client.remove(key)                               # keeps the file
    assert os.path.isfile(image["path"])


def _zeroed_copy(image, directory):
    """A file of the image's name, size and mtime whose content is zeros: only hashing tells it apart."""
    path = os.path.join(str(directory), image["meta"].name)
    with open(path, "wb") as handle:
        handle.write(b"\0" * image["meta"].size)
    stat = os.stat(image["path"])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return path


def test_seed_mode_trusts_the_file_and_plain_add_hashes_it(rtorrents, image, tmp_path):
    meta = image["meta"]
    trusted, checked = tmp_path / "trusted", tmp_path / "checked"
    trusted.mkdir()
    checked.mkdir()
    _zeroed_copy(image, trusted)
    _zeroed_copy(image, checked)
    first = rtorrents("first", "127.0.0.4")
    key = first.client.add(meta, str(trusted), seed_mode=True)      # the checked TorrentMeta: not parsed again
    # seed mode: rtorrent takes the fast-resume data (size and mtime match) and never reads the file
    assert first.status(key)["state"] == "seeding" and first.status(key)["total_done"] == meta.size
    second = rtorrents("second", "127.0.0.9")
    key = second.client.add(meta.data, str(checked))
    wait_for("hash check", lambda: second.client.call("d.is_hash_checked", key.upper()) == 1, timeout=30)
    status = second.status(key)
    assert status["total_done"] == 0 and status["state"] == "downloading"
    second.client.remove(key)
    assert os.path.isfile(str(checked / meta.name))


def test_fast_resume_keeps_the_info_dictionary(image):
    meta = image["meta"]
    path = os.path.join(image["dir"], meta.name)
    data = with_fast_resume(meta, path)
    again = torrent_module.parse_torrent(data)
    assert (again.info_hash_v1, again.info_hash_v2, again.trackers) == (meta.info_hash_v1, meta.info_hash_v2, meta.trackers)
    resume = torrent_module.bdecode(data)[b"libtorrent_resume"]
    chunks = (meta.size + meta.piece_size - 1) // meta.piece_size
    assert resume == {b"bitfield": chunks, b"files": [{b"completed": chunks, b"mtime": int(os.stat(path).st_mtime), b"priority": 1}]}


def test_seed_mode_refuses_a_file_of_the_wrong_size(rtorrents, image, tmp_path):
    meta = image["meta"]
    node = rtorrents("node", "127.0.0.5")
    (tmp_path / meta.name).write_bytes(b"x" * 100)
    with pytest.raises(EngineError, match="holds 100 bytes"):
        node.client.add(meta.data, str(tmp_path), seed_mode=True)
    assert node.client.keys() == []


def test_move_refuses_an_existing_target_and_keeps_seeding(rtorrents, image, tmp_path):
    meta = image["meta"]
    node = rtorrents("node", "127.0.0.6")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(image["path"], str(work / meta.name))
    key = node.client.add(meta.data, str(work), seed_mode=True)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / meta.name).write_bytes(b"other")
    with pytest.raises(EngineError, match="already exists"):
        node.client.move(key, str(occupied), str(work), meta.name)
    assert (occupied / meta.name).read_bytes() == b"other"
    assert node.status(key)["save_dir"] == str(work)
    with pytest.raises(EngineError, match="not a directory"):
        node.client.move(key, str(tmp_path / "missing"), str(work), meta.name)


def test_bad_requests_name_the_reason(rtorrents, image, tmp_path):
    node = rtorrents("node", "127.0.0.7")
    with pytest.raises(EngineError, match="not a 40-hex"):
        node.client.status("xyz")
    assert node.client.status("0" * 40) == []
    with pytest.raises(EngineError, match="not an absolute path"):
        node.client.add(image["meta"].data, "relative/dir")
    with pytest.raises(EngineError, match="no torrent"):
        node.client.move("0" * 40, str(tmp_path), str(tmp_path), image["meta"].name)
    with pytest.raises(EngineError, match="d.name failed"):
        node.client.call("d.name", "0" * 40)


def test_engine_path_answer_redirect_refused(rtorrents, image, tmp_path):
    """Whoever answers on rtorrent's socket points the download at another directory: root acts on no path it answers."""
    meta = image["meta"]
    node = rtorrents("node", "127.0.0.10")
    work, victims, dest = tmp_path / "work", tmp_path / "victims", tmp_path / "dest"
    for path in (work, victims, dest):
        path.mkdir()
    shutil.copy(image["path"], str(work / meta.name))
    (victims / meta.name).write_bytes(b"victim")
    key = node.client.add(meta.data, str(work), seed_mode=True)
    handle = key.upper()
    node.client.call("d.stop", handle)
    node.client.call("d.close", handle)
    node.client.call("d.directory.set", handle, str(victims))
    node.client.call("d.start", handle)
    assert node.status(key)["save_dir"] == str(victims)

    with pytest.raises(EngineError, match="added as .* in %s; refused" % work):
        node.client.move(key, str(dest), str(work), meta.name)
    with pytest.raises(EngineError, match="does not act on paths rtorrent answers"):
        node.client.move(key, str(dest))
    with pytest.raises(EngineError, match="refused"):
        node.client.remove(key, delete_files=True, save_dir=str(work), name=meta.name)
    with pytest.raises(EngineError, match="does not act on paths rtorrent answers"):
        node.client.remove(key, delete_files=True)
    assert (victims / meta.name).read_bytes() == b"victim"
    assert sha512(str(work / meta.name)) == image["sha512"] and os.listdir(str(dest)) == []
    assert node.client.keys() == [key]
    node.client.remove(key)                               # forgetting it deletes nothing
    assert node.client.keys() == [] and (victims / meta.name).read_bytes() == b"victim"


NOBODY = 65534
IMAGE = "aa000000-0000-4000-8000-00000000000a"


def _plan(image, url, version, retired=()):
    meta = image["meta"]
    plan = SyncPlan()
    plan.retire = list(retired)
    if version:
        plan.add = [PlannedImage({"dc:identifier": IMAGE, "hv:version": version, "hv:size": meta.size, "sl:checksum:sha512": image["sha512"],
                                  "hv:uri": "https://repo.example/" + meta.name, "vmic:torrent": url, "vmic:torrent_sha256": meta.sha256,
                                  "vmic:btih_v1": meta.info_hash_v1, "vmic:btih_v2": meta.info_hash_v2}, "list", "good")]
    return plan


def _as_nobody(argv):
    return subprocess.run(argv, user=NOBODY, group=NOBODY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode


def _seeding_from(node, key, directory):
    found = node.client.status(key)
    return found and found[0]["state"] == "seeding" and found[0]["save_dir"] == directory and found[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs rtorrent as another user")
def test_engine_user_write_to_committed_image_refused(rtorrents, image, torrent_server, open_dir):
    """rtorrent runs as its own user: the images it downloaded are root's and read-only once committed, and it
    seeds them from there; a re-endorsement is seeded from the new version; a retired image is no longer seeded."""
    meta = image["meta"]
    seed = rtorrents("seed", "127.0.0.11")
    seed.client.add(meta.data, image["dir"], seed_mode=True)
    node = rtorrents("node", "127.0.0.12", user=NOBODY, where=open_dir)
    store = ImageStore(os.path.join(open_dir, "store"), os.path.join(open_dir, "archive"))
    owner = (NOBODY, NOBODY)
    results = transfer(_plan(image, torrent_server, "1"), store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True, owner=owner)
    assert [item["action"] for item in results] == ["added"] and results[0]["bytes_from_peers"] >= meta.size
    v1 = store.find(IMAGE, "1")
    for path, mode in ((v1.path, 0o444), (os.path.dirname(v1.path), 0o755), (os.path.dirname(os.path.dirname(v1.path)), 0o755)):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, mode), path
    assert _as_nobody(["truncate", "-s", "0", v1.path]) != 0
    assert _as_nobody(["touch", os.path.join(os.path.dirname(v1.path), "planted")]) != 0
    assert sha512(v1.path) == image["sha512"] and os.listdir(os.path.join(store.store_dir, ".partial")) == ["progress.json"]
    wait_for("rtorrent seeding the committed image", lambda: _seeding_from(node, meta.info_hash_v1, os.path.dirname(v1.path)), timeout=20)

    # a new version of the same bytes: no transfer; rtorrent seeds it from there once v1 is retired
    plan = _plan(image, torrent_server, "2", retired=[v1])
    results = transfer(plan, store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True, owner=owner)
    assert [item["action"] for item in results] == ["added (same bytes as %s 1, no transfer)" % IMAGE]
    retired, in_use = retire(plan, store, node.client, "archive")
    assert [item["version"] for item in retired] == ["1"] and in_use == []
    v2 = store.find(IMAGE, "2")
    wait_for("rtorrent seeding v2", lambda: _seeding_from(node, meta.info_hash_v1, os.path.dirname(v2.path)), timeout=20)
    assert sha512(v2.path) == image["sha512"]

    # withdrawn: retired and no longer seeded
    retired, _in_use = retire(_plan(image, torrent_server, None, retired=[v2]), store, node.client, "delete")
    assert [item["action"] for item in retired] == ["retired (delete)"]
    assert node.client.keys() == [] and store.images() == []


def test_response_size_limit(rtorrents):
    node = rtorrents("node", "127.0.0.8")
    small = RtorrentEngineClient(node.socket, timeout=10, max_response_bytes=1000)
    with pytest.raises(LimitError, match="larger than 1000 bytes"):
        small.call("system.listMethods")


def test_silent_socket_times_out(tmp_path):
    sockdir = tempfile.mkdtemp(prefix="vmic-rt-")
    path = os.path.join(sockdir, "silent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()))
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(EngineError, match="no complete answer"):
            RtorrentEngineClient(path, timeout=1).call("system.client_version")
        assert time.monotonic() - started < 5
    finally:
        thread.join(5)
        for conn, _addr in accepted:
            conn.close()
        server.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_scgi_framing_and_malformed_responses():
    framed = ScgiTransport.frame(b"<x/>")
    length, rest = framed.split(b":", 1)
    assert rest[int(length):int(length) + 1] == b","
    assert rest.startswith(b"CONTENT_LENGTH\x004\x00SCGI\x001\x00") and framed.endswith(b",<x/>")
    transport = ScgiTransport("/nonexistent")
    assert transport.parse_response(b"Status: 200 OK\r\nContent-Length: 3\r\n\r\nabc", "m") == b"abc"
    with pytest.raises(EngineError, match="SCGI status 500"):
        transport.parse_response(b"Status: 500 Internal\r\n\r\n", "m")
    with pytest.raises(EngineError, match="Content-Length says 9"):
        transport.parse_response(b"Content-Length: 9\r\n\r\nabc", "m")
    with pytest.raises(EngineError, match="no SCGI response header"):
        transport.parse_response(b"garbage", "m")
    with pytest.raises(EngineError, match="failed"):
        RtorrentEngineClient("/nonexistent/rpc.sock", timeout=1).ping()
