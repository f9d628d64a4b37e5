"""Endorser side: catalogue -> signed list with torrents; idempotent; refuses the wrong certificate."""

import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import torrent
from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.errors import ImageListError, SignatureError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import parse_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.publish import (
    HashCache, PublisherState, TorrentPublisher, default_state_file, existing_envelope, load_catalogue, plan_signed_list, publish_signed_list,
    signed_content)
from ansible_collections.vmic.fleet.plugins.module_utils.seedplan import seed_changes, torrents_to_seed
from ansible_collections.vmic.fleet.plugins.module_utils.smime import verify_detached
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import TrustStore
from module_run import run_module

LIST_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
IMAGE_ID = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"


def catalogue(path):
    return {
        "list": {"dc:identifier": LIST_ID, "dc:title": "Publish test", "hv:uri": "https://repo.test/lists/p.list"},
        "endorser": {"dc:creator": "Tester"},
        "images": [{"dc:identifier": IMAGE_ID, "dc:title": "Disk", "hv:uri": "https://repo.test/images/disk.img",
                    "hv:version": 3, "sl:arch": "x86_64", "file": str(path)}],
    }


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "source-disk.raw"
    path.write_bytes(os.urandom(100000))
    return path


def plan(pki, cat, tmp_path, existing=None, identity=None, **kwargs):
    identity = identity or pki.good
    publisher = TorrentPublisher(str(tmp_path / "torrents"), "https://repo.test/torrents", ["http://tracker.test:6969/announce"],
                                 piece_size=16384)
    cache = HashCache(str(tmp_path / "hash-cache.json"))
    result = plan_signed_list(cat, "test", identity.cert_path, identity.key_path, existing=existing, hasher=cache.hash,
                              image_hook=publisher, **kwargs)
    cache.save()
    return result, publisher


def test_signed_list_carries_verified_torrent_fields(pki, tmp_path, image_file):
    result, publisher = plan(pki, catalogue(image_file), tmp_path)
    assert result.changed and result.image_list.version == "1"
    verdict = verify_detached(result.envelope, TrustStore(ca_path=pki.ca_path), "p.list")
    assert verdict.valid, verdict.reasons
    image = parse_image_list(verdict.content, "p.list").images[0]
    assert image.torrent_uri == "https://repo.test/torrents/disk.img.torrent"
    data = (tmp_path / "torrents" / "disk.img.torrent").read_bytes()
    meta = torrent.check_torrent(data, "disk.img", image.size, image.btih_v1, image.btih_v2, image.torrent_sha256)
    assert meta.web_seeds == ["https://repo.test/images/disk.img"]
    assert meta.trackers == ["http://tracker.test:6969/announce"]
    assert publisher.written


def test_second_run_changes_nothing(pki, tmp_path, image_file):
    first, _publisher = plan(pki, catalogue(image_file), tmp_path)
    second, publisher = plan(pki, catalogue(image_file), tmp_path, existing=first.envelope)
    assert not second.changed and second.envelope is None
    assert second.image_list.version == "1"
    assert publisher.written == []


def test_changed_image_bumps_version_and_torrent(pki, tmp_path, image_file):
    first, _publisher = plan(pki, catalogue(image_file), tmp_path)
    image_file.write_bytes(os.urandom(120000))
    os.utime(str(image_file), (1, 2e9))
    second, publisher = plan(pki, catalogue(image_file), tmp_path, existing=first.envelope)
    assert second.changed and second.image_list.version == "2" and second.previous_version == "1"
    assert second.image_list.images[0].size == 120000
    assert publisher.written


def test_renewal_due_resigns_unchanged_content(pki, tmp_path, image_file):
    first, _publisher = plan(pki, catalogue(image_file), tmp_path, lifetime_days=10, renew_before_days=3)
    later = first.image_list.created_epoch + 8 * 86400
    second, _publisher = plan(pki, catalogue(image_file), tmp_path, existing=first.envelope, lifetime_days=10, renew_before_days=3, now=later)
    assert second.changed and "renewal" in second.reason and second.image_list.version == "2"


def test_certificate_not_the_lists_endorser_refused(pki, tmp_path, image_file):
    cat = catalogue(image_file)
    cat["endorser"]["hv:dn"] = pki.good.dn
    with pytest.raises(SignatureError, match="not the list's endorser"):
        plan(pki, cat, tmp_path, identity=pki.other)


def test_certificate_without_digital_signature_refused(pki, tmp_path, image_file):
    with pytest.raises(SignatureError, match="digitalSignature"):
        plan(pki, catalogue(image_file), tmp_path, identity=pki.no_digital_signature)


def test_given_checksum_must_match_file(pki, tmp_path, image_file):
    cat = catalogue(image_file)
    cat["images"][0]["hv:size"] = 5
    with pytest.raises(ImageListError, match="hv:size 5 given"):
        plan(pki, cat, tmp_path)


def test_computed_fields_cannot_be_set(pki, tmp_path, image_file):
    cat = catalogue(image_file)
    cat["list"]["hv:version"] = "99"
    with pytest.raises(ImageListError, match="computed by the signer"):
        plan(pki, cat, tmp_path)


def test_hash_cache_avoids_rehash(tmp_path, image_file):
    cache = HashCache(str(tmp_path / "c.json"))
    first = cache.hash(str(image_file))
    cache.save()
    again = HashCache(str(tmp_path / "c.json"))
    assert again.hash(str(image_file)) == first and not again.dirty


def test_signed_content_reads_our_envelope(pki, tmp_path, image_file):
    first, _publisher = plan(pki, catalogue(image_file), tmp_path)
    assert parse_image_list(signed_content(first.envelope), "x").identifier == LIST_ID


def publish(pki, cat, tmp_path, dest, state, **kwargs):
    """One signer run as the module does it: read the destination, plan, write state and list."""
    result, _publisher = plan(pki, cat, tmp_path, existing=existing_envelope(str(dest)), state=state, **kwargs)
    publish_signed_list(str(dest), result, state)
    return result


def published_version(dest):
    return parse_image_list(signed_content(dest.read_bytes()), "published").version


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_publisher_version_reset_refused(pki, tmp_path, image_file, damage):
    dest = tmp_path / "p.list"
    state = PublisherState(default_state_file(str(dest)))
    assert publish(pki, catalogue(image_file), tmp_path, dest, state).image_list.version == "1"
    image_file.write_bytes(os.urandom(110000))
    os.utime(str(image_file), (1, 2e9))
    assert publish(pki, catalogue(image_file), tmp_path, dest, state).image_list.version == "2"
    if damage == "missing":
        dest.unlink()
    else:
        dest.write_bytes(b"not an envelope")
    third = publish(pki, catalogue(image_file), tmp_path, dest, PublisherState(state.path))
    assert third.changed and third.image_list.version == "3", third.reason
    assert "continuing above version 2" in third.reason
    assert published_version(dest) == "3"
    assert PublisherState(state.path).last_version(LIST_ID)[0] == 3


def test_stale_lower_version_publish_refused(pki, tmp_path, image_file):
    dest = tmp_path / "p.list"
    stale_run = PublisherState(default_state_file(str(dest)))
    stale, _publisher = plan(pki, catalogue(image_file), tmp_path, existing=None, state=stale_run)
    other_run = PublisherState(stale_run.path)
    publish(pki, catalogue(image_file), tmp_path, dest, other_run)
    image_file.write_bytes(os.urandom(110000))
    os.utime(str(image_file), (1, 2e9))
    publish(pki, catalogue(image_file), tmp_path, dest, other_run)
    with pytest.raises(ImageListError) as caught:
        publish_signed_list(str(dest), stale, stale_run)
    message = str(caught.value)
    assert LIST_ID in message and "hv:version 1" in message and "version 2 last published" in message, message
    assert published_version(dest) == "2"


def test_older_list_restored_at_destination_resigned_above(pki, tmp_path, image_file):
    dest = tmp_path / "p.list"
    state = PublisherState(default_state_file(str(dest)))
    publish(pki, catalogue(image_file), tmp_path, dest, state)
    old_envelope = dest.read_bytes()
    image_file.write_bytes(os.urandom(110000))
    os.utime(str(image_file), (1, 2e9))
    publish(pki, catalogue(image_file), tmp_path, dest, state)
    dest.write_bytes(old_envelope)  # a backup of version 1 put back
    again = publish(pki, catalogue(image_file), tmp_path, dest, state)
    assert again.changed and again.image_list.version == "3" and "not the one last published" in again.reason
    assert not publish(pki, catalogue(image_file), tmp_path, dest, state).changed


def test_unreadable_signer_state_refused(pki, tmp_path, image_file):
    path = tmp_path / ".p.list.signer-state.json"
    path.write_bytes(b"{truncated")
    with pytest.raises(VmicError, match="signer state .*p.list.signer-state.json cannot be read"):
        PublisherState(str(path))


def test_signer_state_adopts_list_published_before_it(pki, tmp_path, image_file):
    dest = tmp_path / "p.list"
    first, _publisher = plan(pki, catalogue(image_file), tmp_path)
    dest.write_bytes(first.envelope)
    state = PublisherState(default_state_file(str(dest)))
    assert not publish(pki, catalogue(image_file), tmp_path, dest, state).changed
    assert PublisherState(state.path).last_version(LIST_ID)[0] == 1


def test_missing_signer_certificate_reported_against_certificate(pki, tmp_path, image_file):
    missing = str(tmp_path / "no-such-cert.pem")
    with pytest.raises(VmicError) as caught:
        plan_signed_list(catalogue(image_file), "p.list", missing, pki.good.key_path)
    assert str(caught.value) == "certificate %s: No such file or directory" % missing
    with pytest.raises(VmicError, match="^private key .*no-such-key.pem: No such file"):
        plan_signed_list(catalogue(image_file), "p.list", pki.good.cert_path, str(tmp_path / "no-such-key.pem"))
    with pytest.raises(VmicError, match="^catalogue .*no-such.yml: No such file"):
        load_catalogue(str(tmp_path / "no-such.yml"))


def test_missing_destination_directory_reported_by_name(pki, tmp_path, image_file):
    dest = tmp_path / "not-made" / "p.list"
    with pytest.raises(OSError) as caught:
        write_atomic(str(dest), b"x")
    message = str(caught.value)
    assert message == "cannot write %s: directory %s does not exist" % (dest, dest.parent), message
    result, _publisher = plan(pki, catalogue(image_file), tmp_path)
    with pytest.raises(OSError, match="^cannot write .*not-made/p.list: directory .* does not exist$"):
        publish_signed_list(str(dest), result, PublisherState(default_state_file(str(dest))))
    assert not dest.parent.exists()


def test_missing_torrent_path_refused_with_its_name(pki, tmp_path, image_file):
    plan(pki, catalogue(image_file), tmp_path)
    data_dir = tmp_path / "images"
    data_dir.mkdir()
    present = str(tmp_path / "torrents" / "disk.img.torrent")
    missing = str(tmp_path / "torrents" / "gone.img.torrent")
    with pytest.raises(VmicError) as caught:
        torrents_to_seed([present, missing], str(data_dir))
    assert str(caught.value).startswith("torrent %s: image file %s" % (present, data_dir / "disk.img"))
    os.link(str(image_file), str(data_dir / "disk.img"))
    with pytest.raises(VmicError) as caught:
        torrents_to_seed([present, missing], str(data_dir))
    assert str(caught.value) == "torrent %s: No such file or directory" % missing
    wanted = torrents_to_seed([present], str(data_dir))
    assert seed_changes(wanted, ["f" * 40], exclusive=True) == (sorted(wanted), ["f" * 40], sorted(wanted))


def test_file_common_arguments_apply_to_list_and_torrents(pki, tmp_path, image_file):
    """imagelist_sign takes Ansible's mode/owner/group for the signed list and its torrents, without signing again."""
    (tmp_path / "lists").mkdir()
    dest, torrent_file = tmp_path / "lists" / "p.list", tmp_path / "torrents" / "disk.img.torrent"
    args = {"catalogue_data": catalogue(image_file), "dest": str(dest), "cert": pki.good.cert_path, "key": pki.good.key_path,
            "torrent_dir": str(tmp_path / "torrents"), "torrent_base_url": "https://repo.test/torrents", "piece_size": 16384,
            "mode": "0640"}

    def attributes():
        return [(os.stat(str(path)).st_mode & 0o7777, os.stat(str(path)).st_gid) for path in (dest, torrent_file)]

    first = run_module("imagelist_sign", args, tmp_path)
    assert first["changed"] and attributes() == [(0o640, 0), (0o640, 0)]
    assert run_module("imagelist_sign", args, tmp_path)["changed"] is False
    args.update(mode="u=rw,go=r", group="65534")
    assert run_module("imagelist_sign", args, tmp_path, check_mode=True)["changed"] and attributes() == [(0o640, 0), (0o640, 0)]
    again = run_module("imagelist_sign", args, tmp_path)
    assert again["changed"] and again["version"] == first["version"] and again["torrents_written"] == []
    assert attributes() == [(0o644, 65534), (0o644, 65534)]
