"""The repository's seeding plan (image_seed): what is handed to the engine, what is removed, what check mode leaves alone."""

import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import torrent
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.seedplan import plan_seeding

OTHER = "f" * 40


class MemoryEngine(object):
    """The part of the engine interface image_seed uses, over a dict {key: (save_dir, seed_mode)}."""

    def __init__(self, keys=()):
        self.torrents = dict((key, None) for key in keys)

    def status(self):
        return [{"key": key} for key in sorted(self.torrents)]

    def add(self, torrent_data, save_dir, seed_mode=False):
        self.torrents[torrent.parse_torrent(torrent_data).info_hash_v1] = (save_dir, seed_mode)

    def remove(self, key, delete_files=False):
        assert not delete_files, "image_seed never deletes the published images"
        del self.torrents[key]


@pytest.fixture()
def published(tmp_path):
    """(torrent path, data dir, v1 key) of one published image."""
    data_dir = tmp_path / "images"
    data_dir.mkdir()
    image = data_dir / "disk.img"
    image.write_bytes(os.urandom(40000))
    meta = torrent.make_torrent(str(image), piece_size=16384, web_seeds=["https://repo.test/images/disk.img"])
    path = tmp_path / "disk.img.torrent"
    path.write_bytes(meta.data)
    return str(path), str(data_dir), meta.info_hash_v1


def test_published_torrent_seeded_from_data_dir_once(published):
    path, data_dir, key = published
    engine = MemoryEngine()
    plan = plan_seeding([path], data_dir, engine)
    assert (plan.changed, plan.added, plan.removed, plan.seeding) == (True, [key], [], [key])
    assert engine.torrents == {}, "planning (check mode) leaves the engine alone"
    plan.apply(engine)
    assert engine.torrents == {key: (data_dir, True)}
    again = plan_seeding([path], data_dir, engine)
    assert not again.changed and again.result() == {"changed": False, "added": [], "removed": [], "seeding": [key]}


def test_exclusive_removes_unlisted_torrents_only_when_asked(published):
    path, data_dir, key = published
    engine = MemoryEngine([OTHER])
    assert plan_seeding([path], data_dir, engine).removed == []
    plan = plan_seeding([path], data_dir, engine, exclusive=True)
    assert plan.result(diff=True) == {"changed": True, "added": [key], "removed": [OTHER], "seeding": [key],
                                      "diff": {"before": OTHER + "\n", "after": key + "\n"}}
    plan.apply(engine)
    assert sorted(engine.torrents) == [key]


def test_image_file_of_other_size_refused(published):
    path, data_dir, _key = published
    with open(os.path.join(data_dir, "disk.img"), "ab") as handle:
        handle.write(b"x")
    engine = MemoryEngine()
    with pytest.raises(VmicError, match="^torrent %s: image file .*disk.img has 40001 bytes, the torrent says 40000$" % path):
        plan_seeding([path], data_dir, engine)
    assert engine.torrents == {}
