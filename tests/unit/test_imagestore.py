"""The image store: only verified files become visible, retirement never touches an open image."""

import hashlib
import os
import subprocess
import sys

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, StoreError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import MAX_PROGRESS_BYTES, ImageStore, store_info
from module_run import run_module
UUID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def put_partial(store, data, version="1", name="disk.img"):
    partial = store.partial_dir(UUID, version)
    os.makedirs(partial)
    with open(os.path.join(partial, name), "wb") as handle:
        handle.write(data)
    return hashlib.sha512(data).hexdigest()


def commit(store, version="1", data=b"x" * 5000):
    sha = put_partial(store, data, version)
    assert store.verify_partial(UUID, version, "disk.img", sha, len(data)) is None
    final = store.final_dir(UUID, version)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.rename(store.partial_dir(UUID, version), final)
    store.commit(UUID, version, "disk.img", {"sha512": sha, "size": len(data)})
    return store.find(UUID, version)


def test_partial_data_is_not_in_the_store(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    put_partial(store, b"abc")
    assert store.images() == []


def test_wrong_size_or_hash_refused(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    sha = put_partial(store, b"abc")
    assert "has 3 bytes" in store.verify_partial(UUID, "1", "disk.img", sha, 4)
    assert "sha512" in store.verify_partial(UUID, "1", "disk.img", "0" * 128, 3)


def test_commit_makes_image_visible_read_only_with_current_link(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    image = commit(store)
    assert image is not None and os.path.isfile(image.path)
    assert oct(os.stat(image.path).st_mode & 0o777) == "0o444"
    assert os.readlink(os.path.join(store.store_dir, UUID, "current")) == os.path.join("1", "disk.img")


def test_retire_archives_and_delete_removes(tmp_path):
    store = ImageStore(str(tmp_path / "store"), str(tmp_path / "archive"))
    store.ensure()
    image = commit(store)
    store.retire(image, "archive")
    assert store.images() == []
    assert os.path.isfile(str(tmp_path / "archive" / UUID / "1" / "disk.img"))
    image = commit(store, version="2")
    store.retire(image, "delete")
    assert not os.path.exists(os.path.join(store.store_dir, UUID))


def test_open_image_is_reported_in_use(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    image = commit(store)
    with open(image.path, "rb"):
        assert store.in_use([image]) == [image]
    assert store.in_use([image]) == []


@pytest.mark.parametrize("identifier,version", [("../etc", "1"), (UUID, ".."), (UUID, "a/b"), ("NOTUUID", "1"), (UUID + "\n", "1"),
                                                (UUID.upper(), "1")])
def test_unsafe_names_refused(tmp_path, identifier, version):
    with pytest.raises(StoreError):
        ImageStore(str(tmp_path)).partial_dir(identifier, version)


def _holder(script, *args, **kwargs):
    """A python child that runs ``script`` (then prints "ready" and sleeps); returns the Popen once it is ready."""
    proc = subprocess.Popen([sys.executable, "-c", script + "\nprint('ready', flush=True)\nimport time\ntime.sleep(60)\n"] + list(args),
                            stdout=subprocess.PIPE, **kwargs)
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def _stop(proc):
    proc.kill()
    proc.wait(timeout=10)


def test_memory_mapped_image_with_closed_fd_is_in_use_and_not_retired(tmp_path):
    store = ImageStore(str(tmp_path / "store"), str(tmp_path / "archive"))
    store.ensure()
    image = commit(store)
    # the process maps the image and closes its descriptor: only /proc/<pid>/maps shows it (libc's mmap:
    # Python's mmap module keeps a duplicate of the descriptor)
    proc = _holder("import ctypes, mmap, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.mmap.restype = ctypes.c_void_p\n"
                   "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n"
                   "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                   "assert libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) not in (None, ctypes.c_void_p(-1).value)\n"
                   "os.close(fd)", image.path)
    try:
        assert os.listdir("/proc/%d/fd" % proc.pid) and not any(
            os.readlink("/proc/%d/fd/%s" % (proc.pid, fd)) == image.path for fd in os.listdir("/proc/%d/fd" % proc.pid))
        assert store.in_use([image]) == [image]
    finally:
        _stop(proc)
    assert store.in_use([image]) == []


def test_stored_image_corrupted_after_commit_found_by_verify_all(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    good = commit(store, version="1")
    bad = commit(store, version="2", data=b"y" * 5000)
    assert store.verify_all() == []
    os.chmod(bad.path, 0o644)
    with open(bad.path, "r+b") as handle:
        handle.write(b"z")
    corrupt = store.verify_all()
    assert [(c["identifier"], c["version"], c["path"]) for c in corrupt] == [(UUID, "2", bad.path)]
    assert "sha512" in corrupt[0]["reason"]
    with open(bad.path, "ab") as handle:
        handle.write(b"more")
    assert "5004 bytes" in store.verify_all()[0]["reason"]
    assert os.path.isfile(good.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown and a process of another user)")
def test_engine_user_writable_handle_on_image_commit_refused(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    data = b"w" * 5000
    sha = put_partial(store, data)
    partial = os.path.join(store.partial_dir(UUID, "1"), "disk.img")
    os.chown(partial, 65534, 65534)
    # an engine user keeps a descriptor open for writing (inherited here: its path is out of its reach)
    fd = os.open(partial, os.O_RDWR)
    proc = subprocess.Popen(["sleep", "60"], pass_fds=(fd,), user=65534, group=65534)
    os.close(fd)
    try:
        final = store.make_final_dir(UUID, "1")
        os.rename(partial, os.path.join(final, "disk.img"))
        with pytest.raises(StoreError, match="still open for writing by process %d fd" % proc.pid):
            store.commit(UUID, "1", "disk.img", {"sha512": sha, "size": len(data)})
        assert store.images() == []
    finally:
        _stop(proc)
    store.commit(UUID, "1", "disk.img", {"sha512": sha, "size": len(data)})
    image = store.find(UUID, "1")
    for path in (image.path, os.path.dirname(image.path), os.path.dirname(os.path.dirname(image.path))):
        assert os.stat(path).st_uid == 0 and os.stat(path).st_gid == 0
    assert os.stat(image.path).st_mode & 0o777 == 0o444
    assert os.stat(os.path.dirname(image.path)).st_mode & 0o777 == 0o755


def test_image_info_verify_reports_corrupt_image(tmp_path):
    """image_info verify=true re-hashes the store: a changed image fails the task and is named in ``corrupt``."""
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    image = commit(store)

    def run():
        engine = {"kind": "libtorrent", "socket": str(tmp_path / "none.sock")}
        return run_module("image_info", {"store_dir": store.store_dir, "verify": True, "engine": engine}, tmp_path)

    result = run()
    assert not result.get("failed") and result["corrupt"] == [] and len(result["images"]) == 1
    os.chmod(image.path, 0o644)
    with open(image.path, "r+b") as handle:
        handle.write(b"!")
    result = run()
    assert result["failed"] and [item["path"] for item in result["corrupt"]] == [image.path]
    assert "no longer match" in result["msg"] and "sha512" in result["msg"]


def test_engine_user_owned_held_image_rewrite_refused(tmp_path):
    """A held image left to an engine's user by an earlier release is taken back: root's, 0444, in 0755 directories."""
    store = ImageStore(str(tmp_path / "images"))       # as root, like image_sync on a hypervisor
    store.ensure()
    image = commit(store)
    directory = os.path.dirname(image.path)
    for path in (os.path.dirname(directory), directory, image.path):
        os.chown(path, 65534, 65534)
    os.chmod(directory, 0o775)
    os.chmod(image.path, 0o664)
    assert store.take_ownership(image)
    for path, mode in ((os.path.dirname(directory), 0o755), (directory, 0o755), (image.path, 0o444)):
        stat = os.stat(path)
        assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (0, 0, mode), path
    assert not store.take_ownership(image)


def test_progress_written_atomically_and_read_back(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    assert store.read_progress() == {}
    progress = {"updated_at": "2025-03-04T10:14:20Z", "elapsed": 12.5,
                "images": [{"identifier": UUID, "version": "1", "progress": 0.5, "state": "downloading", "total_done": 5, "size": 10}]}
    store.write_progress(progress)
    assert store.read_progress() == progress
    assert os.listdir(os.path.join(store.store_dir, ".partial")) == ["progress.json"]
    assert os.stat(store.progress_path()).st_mode & 0o777 == 0o644


def test_oversized_or_malformed_progress_refused(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    store.write_progress({"images": []})
    with pytest.raises(StoreError, match="larger than the limit of %d bytes" % MAX_PROGRESS_BYTES):
        store.write_progress({"images": ["x" * MAX_PROGRESS_BYTES]})
    assert store.read_progress() == {"images": []}, "a refused write leaves the last progress in place"
    for content in (b"x" * (MAX_PROGRESS_BYTES + 1), b"{not json", b"[1, 2]"):
        with open(store.progress_path(), "wb") as handle:
            handle.write(content)
        with pytest.raises(StoreError, match="^image store %s: progress file %s " % (store.store_dir, store.progress_path())):
            store.read_progress()


class StatusEngine(object):
    """An engine that answers status with fixed data, or cannot be reached."""

    def __init__(self, torrents=None):
        self.torrents = torrents

    def status(self):
        if self.torrents is None:
            raise EngineError("engine /run/none.sock: status failed: No such file or directory")
        return self.torrents


def test_store_info_gathers_images_progress_and_engine_status(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    image = commit(store)
    store.write_progress({"images": []})
    torrents = [{"key": "a" * 40, "state": "seeding"}]
    info = store_info(store, StatusEngine(torrents))
    assert info == {"images": [image.to_dict()], "corrupt": [], "progress": {"images": []}, "torrents": torrents, "engine_error": None}
    os.chmod(image.path, 0o644)
    with open(image.path, "r+b") as handle:
        handle.write(b"!")
    assert store_info(store, StatusEngine(torrents))["corrupt"] == [], "only verify=true reads every byte"
    info = store_info(store, StatusEngine(), verify=True)
    assert [item["path"] for item in info["corrupt"]] == [image.path] and "sha512" in info["corrupt"][0]["reason"]
    assert info["torrents"] == [] and info["engine_error"] == "engine /run/none.sock: status failed: No such file or directory"


def test_remove_final_dir_leaves_no_empty_directory_and_keeps_held_versions(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    store.ensure()
    store.make_final_dir(UUID, "2")
    store.remove_final_dir(UUID, "2")
    assert os.listdir(store.store_dir) == [".partial"]
    held = commit(store, "1")
    store.make_final_dir(UUID, "2")
    store.remove_final_dir(UUID, "2")
    assert sorted(os.listdir(os.path.join(store.store_dir, UUID))) == ["1", "1.json", "current"] and os.path.isfile(held.path)
