"""A fleet of real engines, each in its own network namespace on a tc-shaped link, with a real
opentracker (closed), an HTTP web seed and a repository seed: the data plane's guarantees.

Timing is never asserted here (see bench/bench_swarm.py); deadlines only stop a hung test.
"""

import os
import shutil
import signal
import time

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import TorrentError
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import check_torrent, make_torrent, v2_truncated
from testfleet.swarm import make_image, sha512_file, summary

# A few-MB image in 256 KiB pieces moves in seconds over 40 Mbit/s links and still has enough pieces
# for a swarm to trade and for a resume to skip.
IMAGE_SIZE = 6 * 1024 * 1024
PIECE_SIZE = 256 * 1024
DEADLINE = 90


def _assert_images_intact(swarm, nodes, meta, want_sha512, where="partial"):
    for node in nodes:
        path = node.file_path(meta.name, where)
        assert os.path.getsize(path) == meta.size, "%s: %s has the wrong size" % (node.name, path)
        assert sha512_file(path) == want_sha512, "%s: %s has the wrong sha512" % (node.name, path)


def test_all_nodes_converge_and_images_verify(make_swarm):
    swarm = make_swarm()
    image = swarm.make_image("centos-7.img", IMAGE_SIZE)
    want = sha512_file(image)
    meta = swarm.make_torrent(image, piece_size=PIECE_SIZE)
    assert swarm.tracker.is_tracked(meta.info_hash_v1) is False  # closed tracker: not yet approved
    swarm.seed(meta)
    assert swarm.tracker.is_tracked(meta.info_hash_v1)
    assert swarm.tracker.is_tracked(v2_truncated(meta.info_hash_v2))

    key = swarm.add_everywhere(meta)
    assert key == meta.info_hash_v1
    status = swarm.wait_complete(key, DEADLINE)

    _assert_images_intact(swarm, swarm.peers, meta, want)
    for name, st in status.items():
        assert st["total_done"] == meta.size == st["total_size"], name
        assert st["error"] is None, name
        assert st["hashfail_count"] == 0, name
        assert st["completed_at"] is not None, name
    # the engines attribute received bytes to sources once a second: let the last sample land
    time.sleep(2.5)
    status = swarm.statuses(key)
    received = sum(st["bytes_from_peers"] + st["bytes_from_web_seed"] for st in status.values())
    assert received >= len(swarm.peers) * meta.size, summary(status)
    # the peers traded among themselves: not every copy came from the repository host
    assert sum(st["upload_total"] for st in status.values()) > 0

    # a verified image moves into the store in one rename; nothing is left in the partial dir
    for node in swarm.peers:
        node.move(key)
    for node in swarm.peers:
        deadline = time.monotonic() + 30
        while not os.path.exists(node.file_path(meta.name, "store")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(node.file_path(meta.name, "partial")), node.name
    _assert_images_intact(swarm, swarm.peers, meta, want, where="store")


def _corrupt_copy(src, dst):
    """Copy ``src`` to ``dst`` flipping one byte in every 16 KiB block (the .torrent stays that of ``src``).

    Every block, not just every piece: v2 merkle trees verify single blocks, so an intact block from
    the corrupting peer would be (rightly) accepted."""
    shutil.copyfile(src, dst)
    size = os.path.getsize(dst)
    with open(dst, "r+b") as handle:
        for offset in range(8192, size, 16384):
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))


def test_corrupting_peer_cannot_poison_any_image(make_swarm):
    swarm = make_swarm(web_seed=False, extra_hosts=["evil"])
    image = swarm.make_image("debian-12.img", IMAGE_SIZE)
    want = sha512_file(image)
    # no web seed in this torrent: during the first phase the corrupting peer is the only source
    meta = swarm.make_torrent(image, piece_size=PIECE_SIZE, web_seed=False)
    swarm.approve(meta)

    evil_dir = os.path.join(swarm.workdir, "evil-data")
    os.makedirs(evil_dir)
    _corrupt_copy(image, os.path.join(evil_dir, meta.name))
    assert sha512_file(os.path.join(evil_dir, meta.name)) != want
    evil = swarm.extra_node("evil", "bare", {"args": ["--trust-pieces", "--no-dht"]})
    evil.add(meta.data, evil_dir, seed_mode=True)

    key = swarm.add_everywhere(meta)
    # phase 1: the only peer with data serves corrupted pieces; every one must fail its hash check
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = swarm.statuses(key)
        if sum(1 for st in status.values() if st and st["hashfail_count"] > 0) >= len(swarm.peers) // 2:
            break
        time.sleep(0.25)
    status = swarm.statuses(key)
    assert sum(st["hashfail_count"] for st in status.values()) > 0, summary(status)
    assert all(st["state"] == "downloading" and st["progress"] < 1 for st in status.values()), summary(status)

    # phase 2: the honest repository seed appears; the rollout completes with intact images
    swarm.seed(meta)
    status = swarm.wait_complete(key, DEADLINE)
    _assert_images_intact(swarm, swarm.peers, meta, want)
    assert sum(st["hashfail_count"] for st in status.values()) > 0
    assert sum(st["banned_peers"] for st in status.values()) > 0, "no engine banned the corrupting peer"


def test_sigkill_mid_download_resumes_without_refetching(make_swarm):
    swarm = make_swarm()
    image = swarm.make_image("ubuntu-22.img", IMAGE_SIZE)
    want = sha512_file(image)
    meta = swarm.make_torrent(image, piece_size=PIECE_SIZE)
    victim = swarm.peers[0]
    others = swarm.peers[1:]
    # the victim's link is slow so that it is caught mid-download
    swarm.fleet.shape(victim.host, 4)
    swarm.seed(meta)
    key = swarm.add_everywhere(meta)
    swarm.wait_complete(key, DEADLINE, nodes=others)

    # wait until the engine has saved resume data covering a good part of the file
    deadline = time.monotonic() + DEADLINE
    resume = os.path.join(victim.state_dir, "%s.resume" % key)
    mark = None
    while time.monotonic() < deadline:
        st = victim.one(key)
        assert st["state"] != "seeding", "victim finished before it could be killed; slow its link further"
        if mark is None and st["total_done"] >= meta.size // 2:
            mark = time.time()
        if mark is not None and os.path.exists(resume) and os.path.getmtime(resume) > mark:
            break
        time.sleep(0.1)
    else:
        pytest.fail("engine on %s wrote no resume data after half of the file" % victim.name)
    victim.kill()
    assert victim.proc.returncode == -signal.SIGKILL

    victim.start()
    deadline = time.monotonic() + 30
    while True:
        st = victim.one(key)
        if st is not None and st["state"] not in ("checking",):
            break
        assert time.monotonic() < deadline, "engine on %s did not re-add the torrent after restart" % victim.name
        time.sleep(0.1)
    done_at_restart = st["total_done"]
    received_before_restart_counters = st["bytes_from_peers"] + st["bytes_from_web_seed"]
    assert done_at_restart >= meta.size // 4, "resume data was not used: %d bytes verified after restart" % done_at_restart
    assert done_at_restart < meta.size

    status = swarm.wait_complete(key, DEADLINE, nodes=[victim])
    st = status[victim.name]
    fetched_after = st["bytes_from_peers"] + st["bytes_from_web_seed"] - received_before_restart_counters
    remaining = meta.size - done_at_restart
    # only what was missing is fetched again (plus at most two pieces of protocol slack)
    assert fetched_after <= remaining + 2 * meta.piece_size, (fetched_after, remaining)
    _assert_images_intact(swarm, [victim], meta, want)


def test_rollout_completes_with_tracker_down(make_swarm):
    swarm = make_swarm(tracker=False)  # opentracker never started: the announce URL refuses
    image = swarm.make_image("alma-9.img", IMAGE_SIZE)
    want = sha512_file(image)
    meta = swarm.make_torrent(image, piece_size=PIECE_SIZE)
    assert not swarm.tracker.running
    swarm.seed(meta)
    key = swarm.add_everywhere(meta)
    status = swarm.wait_complete(key, DEADLINE)
    _assert_images_intact(swarm, swarm.peers, meta, want)
    # peers were found without the tracker (DHT from the seed's engine, then PEX), not only the web seed
    assert sum(st["bytes_from_peers"] for st in status.values()) > 0, summary(status)
    assert any(st["bytes_from_peers"] > st["bytes_from_seeds"] for st in status.values()), \
        "no leecher received data from another leecher: %s" % summary(status)


def test_tracker_killed_mid_rollout_still_completes(make_swarm):
    swarm = make_swarm()
    image = swarm.make_image("rocky-9.img", IMAGE_SIZE)
    want = sha512_file(image)
    meta = swarm.make_torrent(image, piece_size=PIECE_SIZE)
    swarm.seed(meta)
    swarm.tracker.stop(signal.SIGKILL)
    assert not swarm.tracker.running
    key = swarm.add_everywhere(meta)
    swarm.wait_complete(key, DEADLINE)
    _assert_images_intact(swarm, swarm.peers, meta, want)


def test_too_little_disk_is_a_clear_error_and_nothing_partial_in_store(make_swarm, tmpfs):
    swarm = make_swarm()
    image = swarm.make_image("fedora-40.img", IMAGE_SIZE)
    want = sha512_file(image)
    meta = swarm.make_torrent(image, piece_size=PIECE_SIZE)
    small = swarm.peers[0]
    small.partial_dir = tmpfs(IMAGE_SIZE // 4)
    others = swarm.peers[1:]
    swarm.seed(meta)
    key = swarm.add_everywhere(meta)
    swarm.wait_complete(key, DEADLINE, nodes=others)
    _assert_images_intact(swarm, others, meta, want)

    deadline = time.monotonic() + 30  # the disk fills within seconds of the first data
    while True:
        st = small.one(key)
        if st and st["error"]:
            break
        assert st is None or st["state"] != "seeding", "a file larger than its disk completed?"
        assert time.monotonic() < deadline, "no error reported for a full disk: %s" % st
        time.sleep(0.2)
    assert st["state"] == "error", st
    assert "space" in st["error"].lower(), "error does not say the disk is full: %r" % st["error"]
    assert os.listdir(small.store_dir) == []
    with pytest.raises(Exception):
        small.move(key)
    assert os.listdir(small.store_dir) == []


def test_torrent_disagreeing_with_signed_metadata_is_refused_before_download(make_swarm):
    swarm = make_swarm(peers=1)
    node = swarm.peers[0]
    image = swarm.make_image("sl-7.img", IMAGE_SIZE // 2)
    good = swarm.make_torrent(image, piece_size=PIECE_SIZE)
    signed = {"expected_name": good.name, "expected_size": good.size, "expected_v1": good.info_hash_v1,
              "expected_v2": good.info_hash_v2, "expected_sha256": good.sha256}
    swarm.seed(good)
    swarm.start_peers()

    other_path = make_image(os.path.join(swarm.workdir, "other.img"), IMAGE_SIZE // 2)
    renamed = make_torrent(image, name="sl-7-evil.img", piece_size=PIECE_SIZE, web_seeds=good.web_seeds,
                           trackers=good.trackers)
    other = make_torrent(other_path, name=good.name, piece_size=PIECE_SIZE, web_seeds=good.web_seeds,
                         trackers=good.trackers)

    def admit(data, **expected):
        meta = check_torrent(data, **expected)  # raises before the engine sees anything
        return node.add(meta.data)

    cases = [
        (renamed.data, signed, "sha256"),                       # different bytes than the signed list names
        (other.data, signed, "sha256"),
        (renamed.data, dict(signed, expected_sha256=renamed.sha256), "name"),
        (good.data, dict(signed, expected_size=good.size + 1), "size"),
        (other.data, dict(signed, expected_sha256=other.sha256), "info_hash_v1"),
        (good.data, dict(signed, expected_v2="0" * 64), "info_hash_v2"),
    ]
    for data, expected, field in cases:
        with pytest.raises(TorrentError, match=r"%s \S+ differs" % field):
            admit(data, **expected)
    assert node.status() == []
    assert os.listdir(node.partial_dir) == []
    assert swarm.web_seed_stats()["bytes_served"] == 0
    assert not swarm.tracker.is_tracked(other.info_hash_v1)

    # the matching torrent is admitted and downloads
    key = admit(good.data, **signed)
    swarm.wait_complete(key, DEADLINE)
    _assert_images_intact(swarm, [node], good, sha512_file(image))
