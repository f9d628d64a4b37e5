"""The image store: only verified files become visible, retirement never touches an open image."""

import hashlib
import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import StoreError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore

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


@pytest.mark.parametrize("identifier,version", [("../etc", "1"), (UUID, ".."), (UUID, "a/b"), ("NOTUUID", "1")])
def test_unsafe_names_refused(tmp_path, identifier, version):
    with pytest.raises(StoreError):
        ImageStore(str(tmp_path)).partial_dir(identifier, version)
