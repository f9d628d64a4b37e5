# -*- coding: utf-8 -*-
"""The sync pipeline of one hypervisor, attack by attack, without daemons.

Each test runs what the image_sync module runs (verify_lists -> plan_sync -> transfer -> retire) against an
in-memory repository (simulator.py: real signed lists from the test PKI, real hybrid torrents) and a fake
engine (fake_engine.py: downloads by writing the swarm's bytes, moves by rename, misbehaves on demand), as
python-tuf's tests drive its updater with a repository simulator. Every refusal checks that the store is
untouched: the same images, the same files, metadata and links byte for byte (nothing half-written visible),
the same archive, and nothing in the partial area that was not there but the downloads the test names (a
verified or resumable download kept for the next run).

These tests run as root, here and in CI: the store makes its files root's (chown) and an engine with its own
user gets its download directories (chown to ``nobody``).
"""

import os
import pwd
import time
import types

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.errors import LimitError, TorrentError
from ansible_collections.vmic.fleet.plugins.module_utils.fetch import CHUNK
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_ENVELOPE_BYTES, MAX_TORRENT_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import PARTIAL, PROGRESS_FILE, ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import TransferFailed, plan_sync, retire, transfer, verify_lists
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore

from fake_engine import CORRUPT, DONE_EARLY, ERROR, LIE_SAVE_DIR, LOSE, REWRITE_ON_REMOVE, STALL, FakeEngine
from simulator import DAY, RepositorySimulator, image_bytes

VICTIM_URL = "https://repo.test/lists/site.list"
ATTACKER_URL = "https://mirror.test/lists/attacker.list"
LIST_ID = "5a0c0d1e-7b8f-4c2a-9d3e-1f2a3b4c5d6e"
DEBIAN = "6b1d1e2f-8c9a-4d3b-8e4f-2a3b4c5d6e7f"
ALMA = "7c2e2f3a-9dab-4e4c-9f5a-3b4c5d6e7f80"
UBUNTU = "8d3f3a4b-aebc-4f5d-8a6b-4c5d6e7f8091"


class Site(object):
    """One hypervisor subscribed to the victim's list at VICTIM_URL, and the repository and engine it talks to.

    The attacker is an endorser the site trusts for its own catalogue (ATTACKER_URL) only.
    """

    def __init__(self, pki, root):
        self.pki = pki
        self.repo = RepositorySimulator(pki, root / "repo")
        self.engine = FakeEngine(self.repo.swarm)
        self.owner = None
        self.trust = TrustStore(ca_path=pki.ca_path)
        self.registry = EndorserRegistry([
            {"name": "victim", "dn": pki.good.dn, "ca": pki.good.issuer_dn, "urls": [VICTIM_URL]},
            {"name": "attacker", "dn": pki.other.dn, "ca": pki.other.issuer_dn, "urls": [ATTACKER_URL]},
        ])
        self.policy = Policy({"rules": [{"action": "approve", "endorser": ["victim", "attacker"]}]})
        self.store = ImageStore(str(root / "images"), str(root / "archive"))
        self.state_dir = root / "state"
        self.state_dir.mkdir()
        self.state = ListStateStore(str(self.state_dir))
        self.lists = [{"src": VICTIM_URL, "endorser": "victim", "identifier": LIST_ID}]

    def publish(self, images, version, **kwargs):
        """The victim signs its list of ``images`` and serves it at its URL; returns the envelope."""
        return self.repo.publish(VICTIM_URL, self.pki.good, LIST_ID, images, version, **kwargs)

    def sync(self, deadline=10.0, at=None):
        """One run of the image_sync module (phase all): verify (at ``at``, default now), plan, transfer, retire."""
        verdicts = verify_lists(self.lists, self.trust, self.registry, self.state, fetch=self.repo.fetch, now=at)
        plan = plan_sync(verdicts, self.policy, {}, self.store)
        images = transfer(plan, self.store, self.engine, torrent_module, time.time() + deadline, poll=0.01, owner=self.owner,
                          fetch=self.repo.fetch)
        retired, in_use = retire(plan, self.store, self.engine, "archive")
        return types.SimpleNamespace(verdicts=verdicts, plan=plan, images=images, retired=retired, in_use=in_use)

    def snapshot(self):
        """What a refused run must leave as it was (see the module documentation)."""
        partial = os.path.join(self.store.store_dir, PARTIAL)
        return {
            "images": [(image.identifier, image.version, image.meta) for image in self.store.images()],
            "store": tree(self.store.store_dir, skip=partial),
            "archive": tree(self.store.archive_dir),
            "partial": dict((path, entry[1]) for path, entry in tree(partial).items() if entry[0] == "file" and path != PROGRESS_FILE),
            "state": tree(str(self.state_dir)),
        }

    def partial_path(self, image):
        """Where ``image``'s download is kept, relative to the partial area."""
        return os.path.join(image.identifier, image.version, image.name)


def tree(root, skip=None):
    """Everything under ``root`` (not under ``skip``): relative path -> ("dir", mode, uid), ("file", bytes, mode, uid)
    or ("link", target)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        if skip is not None:
            dirs[:] = [name for name in dirs if os.path.join(directory, name) != skip]
        for name in dirs + files:
            path = os.path.join(directory, name)
            stat = os.lstat(path)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                found[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[relative] = ("dir", stat.st_mode & 0o7777, stat.st_uid)
            else:
                with open(path, "rb") as handle:
                    found[relative] = ("file", handle.read(), stat.st_mode & 0o7777, stat.st_uid)
    return found


def assert_untouched(site, before, kept=None):
    """The store, its archive and its partial area are as ``before``, but for the downloads ``kept`` (path -> bytes)."""
    after = site.snapshot()
    assert after["images"] == before["images"]
    assert after["store"] == before["store"]
    assert after["archive"] == before["archive"]
    new = dict((path, data) for path, data in after["partial"].items() if before["partial"].get(path) != data)
    assert new == (kept or {})


def pairs(items):
    return sorted((item.identifier, item.version) for item in items)


@pytest.fixture()
def site(pki, tmp_path):
    return Site(pki, tmp_path)


def converged(site):
    """The site holds Debian 1 from the victim's list version 1; returns (the image, the list's envelope)."""
    debian = site.repo.image(DEBIAN, "1", title="Debian")
    envelope = site.publish([debian], "1")
    site.sync()
    assert pairs(site.store.images()) == [(DEBIAN, "1")]
    return debian, envelope


def updated(site, fault=None, **options):
    """The site holds Debian 1; the list now names Debian 2, whose torrent the engine mishandles with ``fault``.

    Returns (Debian 2, the snapshot of the store before the run that fetches it).
    """
    converged(site)
    update = site.repo.image(DEBIAN, "2", title="Debian")
    site.publish([update], "2")
    if fault is not None:
        site.engine.misbehave(update.name, fault, **options)
    return update, site.snapshot()


def nobody():
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


# --------------------------------------------------------------------------- the good path


@pytest.mark.parametrize("engine_user", ["root", "nobody"])
def test_converge_then_nothing_then_withdrawal_retires(site, engine_user):
    """Images are committed root's and read-only and seeded from the store; a second run changes nothing;
    an image the list no longer names is retired (archived) and no longer seeded."""
    site.owner = nobody() if engine_user == "nobody" else None
    debian, alma = site.repo.image(DEBIAN, "1", title="Debian"), site.repo.image(ALMA, "1", title="Alma")
    site.publish([debian, alma], "1")
    run = site.sync()
    assert [verdict.valid for verdict in run.verdicts] == [True], run.verdicts[0].reasons
    assert sorted((item["identifier"], item["action"]) for item in run.images) == [(DEBIAN, "added"), (ALMA, "added")]
    for image in (debian, alma):
        stored = site.store.find(image.identifier, "1")
        with open(stored.path, "rb") as handle:
            assert handle.read() == image.data
        stat = os.stat(stored.path)
        assert (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) == (0o444, 0, 0)
        assert (stored.meta["sha512"], stored.meta["size"]) == (image.fields["sl:checksum:sha512"], len(image.data))
        assert (stored.meta["list"], stored.meta["endorser"], stored.meta["engine_key"]) == (LIST_ID, "victim", image.info_hash_v1)
        assert stored.torrent() == image.torrent
        assert os.readlink(os.path.join(site.store.store_dir, image.identifier, "current")) == os.path.join("1", image.name)
        status = site.engine.status(image.info_hash_v1)[0]
        assert (status["save_dir"], status["state"]) == (stored.directory, "seeding")
    assert site.store.partials() == []
    assert sorted(site.engine.downloads) == sorted([debian.name, alma.name])

    converged_state = site.snapshot()
    again = site.sync()
    assert again.plan.to_dict()["add"] == [] and again.images == [] and again.retired == []
    assert pairs(again.plan.keep) == [(DEBIAN, "1"), (ALMA, "1")]
    assert site.snapshot() == converged_state
    assert sorted(site.engine.downloads) == sorted([debian.name, alma.name])

    site.publish([debian], "2")
    withdrawn = site.sync()
    assert withdrawn.retired == [{"identifier": ALMA, "version": "1", "action": "retired (archive)"}]
    assert pairs(site.store.images()) == [(DEBIAN, "1")]
    assert site.engine.status(alma.info_hash_v1) == [] and site.engine.status(debian.info_hash_v1)
    with open(os.path.join(site.store.archive_dir, ALMA, "1", alma.name), "rb") as handle:
        assert handle.read() == alma.data


# --------------------------------------------------------------------------- attacks on the torrents


def test_forged_torrent_refused_store_untouched(site):
    """A mirror serves a real torrent of other bytes, with the image's name and size: its sha256 is not the signed one."""
    update, before = updated(site)
    site.repo.serve(update.torrent_url, site.repo.forged_torrent(update))
    added = len(site.engine.added)
    with pytest.raises(TorrentError, match="sha256 [0-9a-f]{64} differs from the signed list's %s" % update.fields["vmic:torrent_sha256"]):
        site.sync()
    assert_untouched(site, before)
    assert len(site.engine.added) == added


def test_mix_and_match_torrent_of_other_image_refused(site):
    """The genuine, signed-for torrent of another image served as this image's torrent."""
    debian, _envelope = converged(site)
    alma = site.repo.image(ALMA, "1", title="Alma")
    site.publish([debian, alma], "2")
    site.repo.serve(alma.torrent_url, debian.torrent)
    before, added = site.snapshot(), len(site.engine.added)
    with pytest.raises(TorrentError, match="sha256 %s differs from the signed list's %s" % (debian.fields["vmic:torrent_sha256"],
                                                                                            alma.fields["vmic:torrent_sha256"])):
        site.sync()
    assert_untouched(site, before)
    assert len(site.engine.added) == added


def test_endless_torrent_refused_store_untouched(site):
    """A torrent URL that never stops sending is cut off at the real torrent limit."""
    update, before = updated(site)
    site.repo.serve_endless(update.torrent_url)
    with pytest.raises(LimitError, match="more than the limit of %d bytes" % MAX_TORRENT_BYTES):
        site.sync()
    assert_untouched(site, before)
    fetched = site.repo.fetches(update.torrent_url)[-1]
    assert fetched["max_bytes"] == MAX_TORRENT_BYTES and fetched["read"] <= MAX_TORRENT_BYTES + CHUNK


# --------------------------------------------------------------------------- attacks on the downloaded bytes


def test_corrupt_download_refused_store_untouched(site):
    """The engine writes other bytes of the right size and says seeding: the sha512 of every byte catches it."""
    update, before = updated(site, CORRUPT)
    with pytest.raises(TransferFailed, match="sha512 of .*%s does not match the signed list" % update.name):
        site.sync()
    assert_untouched(site, before)
    assert site.engine.status(update.info_hash_v1) == [], "the corrupt download is dropped from the engine"
    assert [status["state"] for status in site.engine.status()] == ["seeding"], "the held Debian 1 is still seeded"


def test_engine_reports_done_early_refused(site):
    """The engine says seeding, all bytes done, while half of the file is there."""
    update, before = updated(site, DONE_EARLY)
    with pytest.raises(TransferFailed, match="has %d bytes, the signed list says %d" % (len(update.data) // 2, len(update.data))):
        site.sync()
    assert_untouched(site, before)


def test_engine_lies_about_save_dir_refused(site):
    """The engine says it holds the new version in its final directory of the store: nothing is moved or committed."""
    update, before = updated(site, LIE_SAVE_DIR, where=site.store.final_dir(DEBIAN, "2"))
    with pytest.raises(TransferFailed, match="the engine did not take its torrent %s into" % update.info_hash_v1):
        site.sync()
    assert_untouched(site, before)
    assert update.name not in site.engine.downloads


def test_engine_loses_torrent_refused_store_untouched(site):
    """The engine forgets a torrent half-way: the half it wrote stays in the partial area only."""
    update, before = updated(site, LOSE)
    with pytest.raises(TransferFailed, match="the engine lost the torrent"):
        site.sync()
    assert_untouched(site, before, kept={site.partial_path(update): update.data[:len(update.data) // 2]})


def test_engine_error_refused_store_untouched(site):
    update, before = updated(site, ERROR)
    with pytest.raises(TransferFailed, match="engine error: file error: No space left on device"):
        site.sync()
    assert_untouched(site, before)


def test_slow_retrieval_deadline_refused_store_untouched(site):
    """A download that never completes ends at the deadline; what arrived is kept in the partial area to resume."""
    update, before = updated(site, STALL)
    with pytest.raises(TransferFailed, match=r"not complete by the deadline \(50%\)"):
        site.sync(deadline=0.3)
    assert_untouched(site, before, kept={site.partial_path(update): update.data[:len(update.data) // 2]})


def test_one_bad_image_commits_nothing(site):
    """Two new images, the swarm poisons one: neither is committed; the verified one waits in the partial area
    (still seeded) and the next run, with honest peers, commits both without fetching it again."""
    debian, _envelope = converged(site)
    alma, ubuntu = site.repo.image(ALMA, "1", title="Alma"), site.repo.image(UBUNTU, "1", title="Ubuntu")
    site.publish([debian, alma, ubuntu], "2")
    site.repo.poison(ubuntu)
    before = site.snapshot()
    with pytest.raises(TransferFailed) as failed:
        site.sync()
    assert len(failed.value.failures) == 1 and ubuntu.name in failed.value.failures[0] and "sha512" in failed.value.failures[0]
    assert_untouched(site, before, kept={site.partial_path(alma): alma.data})
    assert site.engine.status(alma.info_hash_v1)[0]["state"] == "seeding"

    site.repo.peers[ubuntu.info_hash_v1] = ubuntu.data
    run = site.sync()
    assert sorted(item["identifier"] for item in run.images) == sorted([ALMA, UBUNTU])
    assert pairs(site.store.images()) == sorted([(DEBIAN, "1"), (ALMA, "1"), (UBUNTU, "1")])
    assert site.engine.downloads.count(alma.name) == 1
    assert site.store.partials() == []


def test_file_rewritten_after_check_refused_store_untouched(site):
    """An engine with its own user rewrites a verified file when it lets go of it: the hash after the take catches it;
    the other image, already taken into the store, goes back to the partial area and nothing is committed."""
    site.owner = nobody()
    debian, _envelope = converged(site)
    alma, ubuntu = site.repo.image(ALMA, "1", title="Alma"), site.repo.image(UBUNTU, "1", title="Ubuntu")
    site.publish([debian, alma, ubuntu], "2")
    site.engine.misbehave(ubuntu.name, REWRITE_ON_REMOVE)
    before = site.snapshot()
    with pytest.raises(TransferFailed, match="image %s 1 .*sha512 of .*%s does not match" % (UBUNTU, ubuntu.name)):
        site.sync()
    assert_untouched(site, before, kept={site.partial_path(alma): alma.data})
    assert site.engine.status(alma.info_hash_v1)[0]["save_dir"] == site.store.partial_dir(ALMA, "1")

    site.engine.behave()
    run = site.sync()
    assert sorted(item["identifier"] for item in run.images) == sorted([ALMA, UBUNTU])
    assert site.store.verify_all() == [] and site.store.partials() == []


def test_failed_take_leaves_store_untouched(site):
    """A take that fails its check removes the final and identifier directories it made: the store is as it was."""
    site.owner = nobody()
    debian, _envelope = converged(site)
    ubuntu = site.repo.image(UBUNTU, "1", title="Ubuntu")
    site.publish([debian, ubuntu], "2")
    site.engine.misbehave(ubuntu.name, REWRITE_ON_REMOVE)
    before = site.snapshot()
    with pytest.raises(TransferFailed, match="sha512 of .*%s does not match" % ubuntu.name):
        site.sync()
    assert_untouched(site, before)


# --------------------------------------------------------------------------- attacks on the list


def test_rollback_list_refused_images_held(site):
    """A mirror serves the older, genuine list version 1 after version 2: refused, the store held as it is."""
    _debian, version_1 = converged(site)
    update = site.repo.image(DEBIAN, "2", title="Debian")
    site.publish([update], "2")
    site.sync()
    assert pairs(site.store.images()) == [(DEBIAN, "2")]
    site.repo.serve(VICTIM_URL, version_1)
    before = site.snapshot()
    run = site.sync()
    assert not run.verdicts[0].valid and "rollback" in " ".join(run.verdicts[0].reasons)
    assert pairs(run.plan.held) == [(DEBIAN, "2")] and run.plan.add == [] and run.retired == []
    assert_untouched(site, before)
    assert site.snapshot()["state"] == before["state"]


def test_freeze_expired_list_images_held(site):
    """A mirror keeps serving the list the host accepted before it expired: refused, its images neither updated nor retired."""
    now = time.time()
    debian = site.repo.image(DEBIAN, "1", title="Debian")
    site.publish([debian], "1", created=now - 10 * DAY, expires=now - DAY)
    site.sync(at=now - 5 * DAY)
    assert pairs(site.store.images()) == [(DEBIAN, "1")]
    before = site.snapshot()
    run = site.sync()
    assert not run.verdicts[0].valid and "expired" in " ".join(run.verdicts[0].reasons)
    assert pairs(run.plan.held) == [(DEBIAN, "1")] and run.retired == []
    assert_untouched(site, before)


def test_unreachable_list_images_held(site):
    converged(site)
    site.repo.unreachable(VICTIM_URL)
    before = site.snapshot()
    run = site.sync()
    assert not run.verdicts[0].valid and "Connection refused" in " ".join(run.verdicts[0].reasons)
    assert pairs(run.plan.held) == [(DEBIAN, "1")] and run.retired == []
    assert_untouched(site, before)


def test_unreachable_list_keeps_downloads(site):
    """A download whose list is unreachable in the next run is neither committed nor discarded: the refused list may be
    the one that names it (held back, not withdrawn); the run after, with the list back, commits it without a transfer."""
    update, _before = updated(site)
    verdicts = verify_lists(site.lists, site.trust, site.registry, site.state, fetch=site.repo.fetch)
    plan = plan_sync(verdicts, site.policy, {}, site.store)
    transfer(plan, site.store, site.engine, torrent_module, time.time() + 10, poll=0.01, commit=False, fetch=site.repo.fetch)
    served = site.repo.responses[VICTIM_URL]
    site.repo.unreachable(VICTIM_URL)
    before = site.snapshot()
    run = site.sync()
    assert not run.verdicts[0].valid and run.plan.to_dict()["discard"] == [] and run.retired == []
    assert_untouched(site, before)
    assert before["partial"][site.partial_path(update)] == update.data
    # the same signed list back (a list signed again as version 2 a second later has other bytes: refused, rightly)
    site.repo.responses[VICTIM_URL] = served
    downloads = len(site.engine.downloads)
    assert [(item["identifier"], item["version"], item["action"]) for item in site.sync().images] == [(DEBIAN, "2", "added")]
    assert len(site.engine.downloads) == downloads


def test_other_endorsers_list_at_subscribed_url_refused(site):
    """The attacker, trusted for its own catalogue, serves at the victim's URL a list it signed with the victim's
    UUID and a huge version, offering its own bytes as the next Debian: refused, nothing added or retired."""
    converged(site)
    evil = site.repo.image(DEBIAN, "3", title="Debian", data=image_bytes("attacker", 40 * 1024))
    site.repo.publish(VICTIM_URL, site.pki.other, LIST_ID, [evil], "999999")
    before = site.snapshot()
    run = site.sync()
    assert not run.verdicts[0].valid
    assert "signed by endorser attacker, not by victim" in " ".join(run.verdicts[0].reasons)
    assert pairs(run.plan.held) == [(DEBIAN, "1")] and run.plan.add == [] and run.retired == []
    assert_untouched(site, before)
    assert site.snapshot()["state"] == before["state"]
    assert evil.torrent_url not in [record["url"] for record in site.repo.fetched]


def test_endless_list_refused(site):
    """A list URL that never stops sending is cut off at the real envelope limit; the images are held."""
    converged(site)
    site.repo.serve_endless(VICTIM_URL)
    before = site.snapshot()
    run = site.sync()
    assert not run.verdicts[0].valid
    assert "more than the limit of %d bytes" % MAX_ENVELOPE_BYTES in " ".join(run.verdicts[0].reasons)
    fetched = site.repo.fetches(VICTIM_URL)[-1]
    assert fetched["max_bytes"] == MAX_ENVELOPE_BYTES and fetched["read"] <= MAX_ENVELOPE_BYTES + CHUNK
    assert pairs(run.plan.held) == [(DEBIAN, "1")] and run.retired == []
    assert_untouched(site, before)
