# -*- coding: utf-8 -*-
"""The rollout's activation needs no repository: it verifies again, offline, the list bytes and torrents the
download phase kept (imagesync.KeptCopies in the state directory) instead of fetching them.

rollout.yml runs image_sync phase=download on every host (lists verified, torrents checked and handed to the engine),
then phase=activate in batches. The repository (and the tracker) may be gone by then while every piece is in the
swarm: the activation takes the kept copies and runs every check on them again (signature, pinned CA, the site's
CRLs, expiry, the state's rollback floor, the subscription; each torrent against the signed list). A kept copy that
fails is refused with the list named and nothing changes (it is not silently fetched again), except a copy below what
the state accepted since: that one is superseded, forgotten, and the list is fetched.

The helpers below run what the image_sync module runs in each phase, against the in-memory repository and the fake
engine of test_sync_pipeline.py; the behaviour test serves the repository from a real HTTPS server on 127.0.0.1 and
stops it after the download phase.
"""

import hashlib
import os
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.errors import TorrentError
from ansible_collections.vmic.fleet.plugins.module_utils.fetch import fetch_bytes
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_ENVELOPE_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import (
    KEPT_DIR, KeptCopies, needs_activation, plan_sync, retire, transfer, verify_lists)
from ansible_collections.vmic.fleet.plugins.module_utils.smime import sign_detached
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry

from simulator import RepositorySimulator, image_bytes
from test_fetch import server_context
from test_sync_pipeline import DEBIAN, LIST_ID, VICTIM_URL, Site, assert_untouched, converged, pairs, site  # noqa: F401  pylint: disable=unused-import


def download(site, fetch=None):  # pylint: disable=redefined-outer-name
    """image_sync phase=download wait=false: verify (fetching), plan, keep the verified bytes, hand the torrents over."""
    fetch = fetch or site.repo.fetch
    kept = KeptCopies(str(site.state_dir))
    verdicts = verify_lists(site.lists, site.trust, site.registry, site.state, fetch=fetch)
    plan = plan_sync(verdicts, site.policy, {}, site.store)
    kept.keep_for_activation(verdicts, needs_activation(plan, site.store))
    images = transfer(plan, site.store, site.engine, torrent_module, time.time() + 10, poll=0.01, commit=False, wait=False,
                      owner=site.owner, fetch=fetch, kept=kept)
    return types.SimpleNamespace(verdicts=verdicts, plan=plan, images=images)


def activate(site, fetch=None, offline=True):  # pylint: disable=redefined-outer-name
    """image_sync phase=activate: verify (from the kept copies unless ``offline`` is False, the release before), plan,
    wait, verify every byte, commit, retire, forget the kept copies."""
    fetch = fetch or site.repo.fetch
    kept = KeptCopies(str(site.state_dir)) if offline else None
    verdicts = verify_lists(site.lists, site.trust, site.registry, site.state, fetch=fetch, kept=kept)
    plan = plan_sync(verdicts, site.policy, {}, site.store)
    images = transfer(plan, site.store, site.engine, torrent_module, time.time() + 5, poll=0.01, owner=site.owner, fetch=fetch, kept=kept)
    retired, _in_use = retire(plan, site.store, site.engine, "archive")
    if kept is not None:
        kept.activated(verdicts)
    return types.SimpleNamespace(verdicts=verdicts, plan=plan, images=images, retired=retired)


def kept_list(site):  # pylint: disable=redefined-outer-name
    return KeptCopies(str(site.state_dir)).list_path(site.lists[0])


def write_kept(path, data):
    """Put bytes where a kept copy lives, as root with the kept files' mode (an attacker or a corrupt disk)."""
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def downloaded_update(site):  # pylint: disable=redefined-outer-name
    """The site holds Debian 1; the list now names Debian 2, downloaded by a download phase that kept its list.

    Returns (Debian 2, its download phase's envelope, the snapshot before the activation)."""
    converged(site)
    update = site.repo.image(DEBIAN, "2", title="Debian")
    envelope = site.publish([update], "2")
    run = download(site)
    assert [item["action"] for item in run.images] == ["downloaded"]
    with open(kept_list(site), "rb") as handle:
        assert handle.read() == envelope
    return update, envelope, site.snapshot()


def assert_refused_untouched(site, run, before, update, why):  # pylint: disable=redefined-outer-name
    """The list is refused naming its kept copy and ``why``; Debian 1 held, nothing added or retired; the store, the
    state and the kept copy as they were; the list was not fetched again."""
    reasons = " ".join(run.verdicts[0].reasons)
    assert not run.verdicts[0].valid and run.verdicts[0].kept_copy == "refused"
    assert "image list %s: the copy the download phase kept is refused" % VICTIM_URL in reasons and kept_list(site) in reasons
    assert why in reasons
    assert pairs(run.plan.held) == [(DEBIAN, "1")] and run.plan.add == [] and run.images == [] and run.retired == []
    assert_untouched(site, before)
    assert site.snapshot()["partial"][site.partial_path(update)] == update.data      # the download is kept for the next run
    assert site.snapshot()["state"] == before["state"]


# --------------------------------------------------------------------------- the good path


def test_activation_uses_kept_copies_without_fetching(site):  # pylint: disable=redefined-outer-name
    """The activation verifies the kept list and torrent, fetches neither, commits; then the copies are gone. The kept
    files are root's and private."""
    update, _envelope, _before = downloaded_update(site)
    root = os.path.join(str(site.state_dir), KEPT_DIR)
    torrent = os.path.join(root, "torrents", "%s.torrent" % update.fields["vmic:torrent_sha256"])
    for path, mode in ((root, 0o700), (os.path.dirname(kept_list(site)), 0o700), (kept_list(site), 0o600), (torrent, 0o600)):
        info = os.lstat(path)
        assert (info.st_mode & 0o7777, info.st_uid) == (mode, os.geteuid()), path
    fetched = len(site.repo.fetched)
    run = activate(site)
    assert site.repo.fetched[fetched:] == []
    assert run.verdicts[0].valid and run.verdicts[0].kept_copy == "used"
    assert [(item["identifier"], item["version"], item["action"]) for item in run.images] == [(DEBIAN, "2", "added")]
    assert pairs(site.store.images()) == [(DEBIAN, "2")]
    assert not os.path.exists(kept_list(site)) and not os.path.exists(torrent)


class _RepositoryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def do_GET(self):  # pylint: disable=invalid-name
        response = self.server.repo.responses.get(self.server.base_url + self.path)
        body = response.data if response is not None else b"not found\n"
        self.send_response(200 if response is not None else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RepositoryServer(object):
    """The simulator's repository (lists and torrents) served over HTTPS on 127.0.0.1, until :meth:`stop`."""

    def __init__(self, pki, directory):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RepositoryHandler)
        self.httpd.daemon_threads = True
        self.httpd.socket = server_context(pki, str(directory)).wrap_socket(self.httpd.socket, server_side=True)
        self.base_url = self.httpd.base_url = "https://127.0.0.1:%d" % self.httpd.server_address[1]
        self.httpd.repo = self.repo = RepositorySimulator(pki, directory / "repo", base_url=self.base_url)
        self.running = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()


def served_host(pki, directory):
    """A host subscribed to Debian 1 on a repository served over HTTPS; returns (host, server, fetch)."""
    directory.mkdir()
    server = RepositoryServer(pki, directory)
    host = Site(pki, directory)
    url = server.base_url + urlsplit(VICTIM_URL).path
    host.repo = server.repo
    host.engine.swarm = server.repo.swarm
    host.registry = EndorserRegistry([{"name": "victim", "dn": pki.good.dn, "ca": pki.good.issuer_dn, "urls": [url]}])
    host.lists = [{"src": url, "endorser": "victim", "identifier": LIST_ID}]
    host.repo.publish(url, pki.good, LIST_ID, [host.repo.image(DEBIAN, "1", title="Debian")], "1")

    def fetch(src, max_bytes, **options):
        return fetch_bytes(src, max_bytes, **dict(options, ca_file=pki.root.cert_path))

    return host, server, fetch


def test_activation_with_repository_stopped_after_download(pki, tmp_path):
    """The repository's HTTPS server (lists and torrents) is stopped once the download phase handed the torrents over
    (every piece is in the swarm): the activation commits the image all the same. The release before, fetching the
    list again, refused it as unreachable and added nothing."""
    for offline in (True, False):
        host, server, fetch = served_host(pki, tmp_path / ("offline" if offline else "fetching"))
        try:
            started = download(host, fetch)
            assert started.verdicts[0].valid and [item["action"] for item in started.images] == ["downloaded"]
        finally:
            server.stop()
        run = activate(host, fetch, offline=offline)
        if offline:
            assert run.verdicts[0].valid and run.verdicts[0].kept_copy == "used"
            assert [(item["identifier"], item["version"], item["action"]) for item in run.images] == [(DEBIAN, "1", "added")]
            assert pairs(host.store.images()) == [(DEBIAN, "1")]
        else:
            assert not run.verdicts[0].valid and "Connection refused" in " ".join(run.verdicts[0].reasons)
            assert run.images == [] and host.store.images() == []


# --------------------------------------------------------------------------- attacks on the kept copies


def test_tampered_kept_copy_refused(site):  # pylint: disable=redefined-outer-name
    """The kept list's signed content is changed (another sha512 for Debian 2): the signature fails, the list is refused
    naming its kept copy, it is not fetched again though the repository answers, nothing changes."""
    update, envelope, before = downloaded_update(site)
    evil = image_bytes("attacker", len(update.data))
    sha512 = update.fields["sl:checksum:sha512"].encode()
    assert sha512 in envelope
    write_kept(kept_list(site), envelope.replace(sha512, hashlib.sha512(evil).hexdigest().encode()))
    before = site.snapshot()
    fetched = len(site.repo.fetched)
    run = activate(site)
    assert site.repo.fetched[fetched:] == []
    assert_refused_untouched(site, run, before, update, "signature")


def test_other_endorsers_kept_copy_refused(site):  # pylint: disable=redefined-outer-name
    """A list the attacker (a trusted endorser for its own catalogue) signed with the victim's UUID and a huge version
    takes the place of the victim's kept copy: refused, nothing changes, the state keeps the victim's version."""
    update, _envelope, _before = downloaded_update(site)
    evil = site.repo.image(DEBIAN, "3", title="Debian", data=image_bytes("attacker", 40 * 1024))
    content = site.repo.document(site.pki.other, LIST_ID, [evil], "999999", VICTIM_URL).to_json_bytes()
    write_kept(kept_list(site), sign_detached(content, site.pki.other.cert_pem, site.pki.other.key_pem, chain_pems=site.pki.other.chain_pems))
    before = site.snapshot()
    run = activate(site)
    assert_refused_untouched(site, run, before, update, "signed by endorser attacker, not by victim")
    assert evil.torrent_url not in [record["url"] for record in site.repo.fetched]


def test_stale_kept_copy_rollback_refused(site):  # pylint: disable=redefined-outer-name
    """A kept copy of list version 1 after the host accepted version 2 (another run since) is refused as a rollback:
    never applied, forgotten, the list fetched instead (version 2: Debian 2 stays); with the repository unreachable the
    list is refused and Debian 2 held."""
    _debian, version_1 = converged(site)
    update = site.repo.image(DEBIAN, "2", title="Debian")
    site.publish([update], "2")
    site.sync()
    assert pairs(site.store.images()) == [(DEBIAN, "2")]
    os.makedirs(os.path.dirname(kept_list(site)), 0o700)
    write_kept(kept_list(site), version_1)
    before = site.snapshot()
    run = activate(site)
    assert run.verdicts[0].valid and run.verdicts[0].kept_copy == "superseded" and run.verdicts[0].version == "2"
    assert "rollback" in run.verdicts[0].kept_reason and kept_list(site) in run.verdicts[0].kept_reason
    assert pairs(run.plan.keep) == [(DEBIAN, "2")] and run.plan.add == [] and run.retired == []
    assert_untouched(site, before)
    assert not os.path.exists(kept_list(site))

    write_kept(kept_list(site), version_1)
    site.repo.unreachable(VICTIM_URL)
    run = activate(site)
    assert not run.verdicts[0].valid and run.verdicts[0].kept_copy == "superseded"
    assert "Connection refused" in " ".join(run.verdicts[0].reasons)
    assert pairs(run.plan.held) == [(DEBIAN, "2")] and run.retired == []
    assert_untouched(site, before)


def test_oversized_kept_copy_refused(site):  # pylint: disable=redefined-outer-name
    """A kept copy larger than a list may be is refused by its size, before a byte of it is read."""
    update, _envelope, _before = downloaded_update(site)
    with open(kept_list(site), "r+b") as handle:
        handle.truncate(MAX_ENVELOPE_BYTES + 1)
    before = site.snapshot()
    run = activate(site)
    assert_refused_untouched(site, run, before, update, "larger than the limit of %d bytes" % MAX_ENVELOPE_BYTES)


@pytest.mark.parametrize("mode", [0o644, 0o620])
def test_kept_copy_open_to_others_refused(site, mode):  # pylint: disable=redefined-outer-name
    """A kept copy that others could read or write is not the private copy the download phase wrote: refused."""
    update, _envelope, _before = downloaded_update(site)
    os.chmod(kept_list(site), mode)
    before = site.snapshot()
    run = activate(site)
    assert_refused_untouched(site, run, before, update, "not this user's and private")


def test_forged_kept_torrent_refused(site):  # pylint: disable=redefined-outer-name
    """The kept torrent is replaced by a real torrent of other bytes with the image's name and size: refused against
    the signed list's sha256 and info-hashes before the engine sees it, nothing committed."""
    update, _envelope, before = downloaded_update(site)
    path = KeptCopies(str(site.state_dir)).torrent_path(update.fields["vmic:torrent_sha256"])
    write_kept(path, site.repo.forged_torrent(update))
    added = len(site.engine.added)
    with pytest.raises(TorrentError) as refused:
        activate(site)
    assert "the torrent the download phase kept (%s) is refused" % path in str(refused.value)
    assert site.engine.added[added:] == []
    assert_untouched(site, before)
