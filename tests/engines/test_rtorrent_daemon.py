# -*- coding: utf-8 -*-
"""The rtorrent engine client against real rtorrent 0.9 processes on loopback, with a real opentracker.

Each rtorrent runs headless (``system.daemon.set = true``) with its own session dir, download dir,
SCGI unix socket and 127.0.0.x address; everything lives in pytest's temp dirs and is stopped at the end.
"""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from daemons import planned, sync_plan
from testfleet.waiting import sha512, wait_for

from ansible_collections.vmic.fleet.plugins.module_utils.engine import STATUS_FIELDS
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, LimitError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import retire, transfer
from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.rtorrent_engine import RtorrentEngineClient

PIECE = 64 * 1024
SIZE = 3 * 1024 * 1024 + 4321


@pytest.fixture(scope="module")
def image(make_image):
    """A random image, its hybrid torrent, and a closed opentracker on 127.0.0.1 that tracks it."""
    return make_image(SIZE, PIECE)


@pytest.fixture
def open_dir():
    """A directory that every user can reach (pytest's own are root's alone): for an rtorrent of another user."""
    path = tempfile.mkdtemp(prefix="vmic-rt-open-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    return sync_plan([planned(image, url, IMAGE, version)] if version else [], retired)


def _as_nobody(argv):
    return subprocess.run(argv, user=NOBODY, group=NOBODY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode


def _seeding_from(node, key, directory):
    found = node.client.status(key)
    return found and found[0]["state"] == "seeding" and found[0]["save_dir"] == directory and found[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs rtorrent as another user")
def test_engine_user_write_to_committed_image_refused(rtorrents, image, torrent_url, open_dir):
    """rtorrent runs as its own user: the images it downloaded are root's and read-only once committed, and it
    seeds them from there; a re-endorsement is seeded from the new version; a retired image is no longer seeded."""
    meta = image["meta"]
    seed = rtorrents("seed", "127.0.0.11")
    seed.client.add(meta.data, image["dir"], seed_mode=True)
    node = rtorrents("node", "127.0.0.12", user=NOBODY, where=open_dir)
    store = ImageStore(os.path.join(open_dir, "store"), os.path.join(open_dir, "archive"))
    owner = (NOBODY, NOBODY)
    results = transfer(_plan(image, torrent_url, "1"), store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True, owner=owner)
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
    plan = _plan(image, torrent_url, "2", retired=[v1])
    results = transfer(plan, store, node.client, torrent_module, time.time() + 60, poll=0.2, allow_http=True, owner=owner)
    assert [item["action"] for item in results] == ["added (same bytes as %s 1, no transfer)" % IMAGE]
    retired, in_use = retire(plan, store, node.client, "archive")
    assert [item["version"] for item in retired] == ["1"] and in_use == []
    v2 = store.find(IMAGE, "2")
    wait_for("rtorrent seeding v2", lambda: _seeding_from(node, meta.info_hash_v1, os.path.dirname(v2.path)), timeout=20)
    assert sha512(v2.path) == image["sha512"]

    # withdrawn: retired and no longer seeded
    retired, _in_use = retire(_plan(image, torrent_url, None, retired=[v2]), store, node.client, "delete")
    assert [item["action"] for item in retired] == ["retired (delete)"]
    assert node.client.keys() == [] and store.images() == []


def test_response_size_limit(rtorrents):
    node = rtorrents("node", "127.0.0.8")
    small = RtorrentEngineClient(node.socket, timeout=10, max_response_bytes=1000)
    with pytest.raises(LimitError, match="larger than 1000 bytes"):
        small.call("system.listMethods")
