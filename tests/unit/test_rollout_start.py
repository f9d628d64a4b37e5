# -*- coding: utf-8 -*-
"""The rollout's download step that does not wait (image_sync phase=download wait=false) and the no-op fast path.

rollout.yml hands every host's torrents to its engine and returns at once (transfer(commit=False, wait=False)); the
engine downloads on its own while the controller follows the fleet (fleet_wait); activation then waits, verifies
every byte and commits. These tests run that sequence against the in-memory repository and the fake engine of
test_sync_pipeline.py: a start never changes the store, whatever the engine says; only the activation's own check
of every byte lets an image in. ``needs_activation`` is the fast path: False only when activation would change nothing.
"""

import os
import time

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import PARTIAL
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import TransferFailed, needs_activation, plan_sync, retire, transfer, verify_lists

from fake_engine import CORRUPT, DONE_EARLY, ERROR, STALL
from test_sync_pipeline import ALMA, DEBIAN, assert_untouched, converged, pairs, site, updated  # noqa: F401  pylint: disable=unused-import


def plan(site):  # pylint: disable=redefined-outer-name
    verdicts = verify_lists(site.lists, site.trust, site.registry, site.state, fetch=site.repo.fetch)
    return plan_sync(verdicts, site.policy, {}, site.store)


def start(site):  # pylint: disable=redefined-outer-name
    """One download step of rollout.yml: plan, hand the torrents to the engine, return at once."""
    planned = plan(site)
    images = transfer(planned, site.store, site.engine, torrent_module, time.time() + 10, poll=0.01, commit=False, wait=False,
                      owner=site.owner, fetch=site.repo.fetch)
    return planned, images


def activate(site):  # pylint: disable=redefined-outer-name
    """One activation step as image_sync phase=activate runs it: plan again, wait, verify every byte, commit, retire,
    make held images root's and read-only."""
    planned = plan(site)
    images = transfer(planned, site.store, site.engine, torrent_module, time.time() + 0.5, poll=0.01, owner=site.owner,
                      fetch=site.repo.fetch)
    retired, _in_use = retire(planned, site.store, site.engine, "archive")
    for image in planned.keep:
        site.store.take_ownership(image)
    return images, retired


def test_start_returns_while_the_engine_downloads_store_untouched(site):  # pylint: disable=redefined-outer-name
    """A download the engine has not finished is handed over and reported with its key; nothing is committed;
    the next look finds it done and activation commits it."""
    update, before = updated(site, STALL)
    planned, images = start(site)
    assert [(item["identifier"], item["action"], item["key"], item["size"]) for item in images] == [
        (DEBIAN, "downloading", update.info_hash_v1, len(update.data))]
    assert 0 < images[0]["total_done"] < len(update.data)
    assert needs_activation(planned, site.store)
    assert_untouched(site, before, kept={site.partial_path(update): update.data[:len(update.data) // 2]})
    progress = site.store.read_progress()
    assert [(item["identifier"], item["total_done"]) for item in progress["images"]] == [(DEBIAN, images[0]["total_done"])]

    site.engine.behave()
    images, retired = activate(site)
    assert [(item["identifier"], item["version"], item["action"]) for item in images] == [(DEBIAN, "2", "added")]
    assert [(item["identifier"], item["version"]) for item in retired] == [(DEBIAN, "1")]
    with open(site.store.find(DEBIAN, "2").path, "rb") as handle:
        assert handle.read() == update.data


@pytest.mark.parametrize("fault", [CORRUPT, DONE_EARLY])
def test_engine_reports_bad_download_done_at_start_refused_at_activation(site, fault):  # pylint: disable=redefined-outer-name
    """An engine (or a swarm) that says "done" for wrong bytes gets them no further than the partial area: the start
    believes it, the activation's check of every byte refuses them and the store stays as it was."""
    update, before = updated(site, fault)
    _planned, images = start(site)
    assert [item["action"] for item in images] == ["downloaded"]
    assert site.snapshot()["images"] == before["images"]
    with pytest.raises(TransferFailed) as refused:
        activate(site)
    assert DEBIAN in str(refused.value) and update.info_hash_v1 not in [item.meta.get("engine_key") for item in site.store.images()]
    assert "the image store was not changed" in str(refused.value)
    assert_untouched(site, before)
    assert pairs(site.store.images()) == [(DEBIAN, "1")]


def test_engine_error_at_start_refused_store_untouched(site):  # pylint: disable=redefined-outer-name
    """An engine that cannot download (a full disk) fails the host's download step; nothing changes."""
    _update, before = updated(site, ERROR)
    with pytest.raises(TransferFailed) as refused:
        start(site)
    assert "engine error" in str(refused.value)
    assert_untouched(site, before)


def test_start_never_commits(site):  # pylint: disable=redefined-outer-name
    """transfer refuses wait=False together with commit=True: committing needs the finished, verified download."""
    updated(site)
    with pytest.raises(VmicError, match="never commits"):
        transfer(plan(site), site.store, site.engine, torrent_module, time.time() + 1, commit=True, wait=False, fetch=site.repo.fetch)
    assert pairs(site.store.images()) == [(DEBIAN, "1")]


def test_converged_host_needs_no_activation(site):  # pylint: disable=redefined-outer-name
    """The fast path: a host that holds its set plans nothing, starts nothing and needs no activation run."""
    converged(site)
    before = site.snapshot()
    planned, images = start(site)
    assert images == [] and not needs_activation(planned, site.store)
    assert site.snapshot() == before


def test_withdrawal_needs_activation(site):  # pylint: disable=redefined-outer-name
    """An image to retire (nothing to add) is activation work: the fast path never skips a withdrawal."""
    debian, _envelope = converged(site)
    alma = site.repo.image(ALMA, "1", title="Alma")
    site.publish([debian, alma], "2")
    activate(site)
    site.publish([debian], "3")
    planned, images = start(site)
    assert images == [] and needs_activation(planned, site.store)
    assert pairs(planned.retire) == [(ALMA, "1")]


def test_stale_download_needs_activation(site):  # pylint: disable=redefined-outer-name
    """A download withdrawn before activation is discarded at activation: the fast path does not skip it."""
    debian, _envelope = converged(site)
    alma = site.repo.image(ALMA, "1", title="Alma")
    site.publish([debian, alma], "2")
    site.engine.misbehave(alma.name, STALL)
    start(site)
    site.publish([debian], "3")
    planned = plan(site)
    assert planned.add == [] and planned.stale_downloads and needs_activation(planned, site.store)


def test_writable_held_image_fast_path_bypass_refused(site):  # pylint: disable=redefined-outer-name
    """A held image an earlier release left writable by others (an engine user could rewrite it) is activation work:
    the fast path does not leave it writable."""
    converged(site)
    stored = site.store.find(DEBIAN, "1")
    os.chmod(stored.path, 0o666)
    planned = plan(site)
    assert planned.add == [] and planned.retire == [] and needs_activation(planned, site.store)
    activate(site)
    assert os.stat(stored.path).st_mode & 0o7777 == 0o444
    assert not needs_activation(plan(site), site.store)


def test_foreign_owned_held_image_directory_fast_path_bypass_refused(site):  # pylint: disable=redefined-outer-name
    """A held image's directory owned by another user (who could swap the file) is activation work too."""
    converged(site)
    stored = site.store.find(DEBIAN, "1")
    os.chown(stored.directory, 65534, 65534)
    assert needs_activation(plan(site), site.store)
    activate(site)
    assert os.stat(stored.directory).st_uid == 0
    assert not os.path.isdir(os.path.join(site.store.store_dir, PARTIAL, DEBIAN))


def test_start_lingers_while_a_download_runs_then_returns_it_downloading(site):  # pylint: disable=redefined-outer-name
    """With ``linger`` the start looks at the engine again (every poll) until the time is up, then returns the unfinished
    download as ``downloading``; the store is not touched."""
    update, before = updated(site, STALL)
    planned = plan(site)
    polls = len([call for call in site.engine.calls if call == ("status", None)])
    t0 = time.monotonic()
    images = transfer(planned, site.store, site.engine, torrent_module, time.time() + 10, poll=0.05, commit=False, wait=False,
                      owner=site.owner, fetch=site.repo.fetch, linger=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert len([call for call in site.engine.calls if call == ("status", None)]) - polls >= 4
    assert [(item["identifier"], item["action"], item["key"]) for item in images] == [(DEBIAN, "downloading", update.info_hash_v1)]
    assert_untouched(site, before, kept={site.partial_path(update): update.data[:len(update.data) // 2]})


def test_start_linger_ends_at_the_deadline(site):  # pylint: disable=redefined-outer-name
    """``linger`` never runs past the step's deadline."""
    updated(site, STALL)
    t0 = time.monotonic()
    images = transfer(plan(site), site.store, site.engine, torrent_module, time.time() + 0.2, poll=0.05, commit=False, wait=False,
                      owner=site.owner, fetch=site.repo.fetch, linger=30)
    assert time.monotonic() - t0 < 5
    assert [item["action"] for item in images] == ["downloading"]
