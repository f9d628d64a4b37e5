# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge one hypervisor to its approved, selected image set.

verify the lists (listverify) -> approve (policy) -> select (this host's profile) -> plan
-> for each image to add: fetch its .torrent, check its sha256 against the signed list, check the
   torrent against the list (one file, safe name, size, info-hashes), hand it to the engine, which
   downloads into the store's partial area
-> wait with a deadline, writing progress -> check size and sha512 of every byte
-> only when every download verified: rename each into the store, write its metadata, switch ``current``
-> retire images no longer selected (archive or delete), never one that is open
Any failure before the commit step leaves the store exactly as it was.
"""

from __future__ import annotations

import os
import time
from stat import S_ISLNK, S_ISREG

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.engine import LibtorrentEngineClient
from ansible_collections.vmic.fleet.plugins.module_utils.errors import (
    EngineError, LimitError, MissingDependencyError, StoreError, TorrentError, VmicError)
from ansible_collections.vmic.fleet.plugins.module_utils.fetch import fetch_bytes
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import (
    MAX_ENVELOPE_BYTES, MAX_TORRENT_BYTES, is_endorser_name, is_hex64, is_lower_uuid)
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import BTIH_V1, BTIH_V2, TORRENT_SHA256, TORRENT_URI, ImageListError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import check_file, secure_file
from ansible_collections.vmic.fleet.plugins.module_utils.listverify import ListVerdict, verify_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.policy import HostProfile, evaluate, identity

ENGINE_KINDS = ("libtorrent", "rtorrent")
DEFAULT_SOCKETS = {"libtorrent": "/run/vmic-engine/engine.sock", "rtorrent": "/run/rtorrent/rpc.sock"}


def engine_from_spec(spec):
    """The engine client for ``{kind, socket}`` as the image_sync module's ``engine`` option gives it."""
    spec = spec or {}
    kind = spec.get("kind", "libtorrent")
    timeout = int(spec.get("timeout", 30))
    if kind == "libtorrent":
        return LibtorrentEngineClient(spec.get("socket") or DEFAULT_SOCKETS[kind], timeout=timeout)
    if kind == "rtorrent":
        from ansible_collections.vmic.fleet.plugins.module_utils.rtorrent_engine import RtorrentEngineClient  # pylint: disable=import-outside-toplevel
        return RtorrentEngineClient(spec.get("socket") or DEFAULT_SOCKETS[kind], timeout=timeout)
    raise EngineError("engine kind %r is not one of %s" % (kind, ", ".join(ENGINE_KINDS)))


class PlannedImage(object):
    """One image this host should hold: an :class:`imagelist.Image` of a verified list of ``endorser``."""

    def __init__(self, image, list_identifier, endorser=None):
        self.image = image
        self.identifier = image.identifier
        self.version = image.version
        self.size = image.size
        self.sha512 = image.sha512
        self.list_identifier = list_identifier
        self.endorser = endorser
        self.key = None
        self.name = None
        self.started = None
        self.finished = None
        self.status = {}
        self.source = None       # a held image with the same bytes (_assign_sources)
        self.leader = None       # the image of this run that brings the same bytes
        self.taken = False       # moved out of the engine's download directory (_take_from_engine)

    def describe(self):
        """``<identifier> <version> (<title>)``."""
        return self.image.describe()


class SyncPlan(object):
    """What converging would change.

    ``refused``: the subscriptions whose list was refused this run (source, endorser, identifier,
    reasons, revoked). Their images are ``held`` exactly as they are (neither retired nor updated),
    except when the endorser's certificate is revoked: then they are retired (withdrawn).
    ``conflicts``: images not added because another endorser's held image has the same identifier.
    """

    def __init__(self):
        self.verdicts = []
        self.desired = []
        self.add = []
        self.keep = []
        self.retire = []
        self.held = []
        self.refused = []
        self.conflicts = []
        self.stale_downloads = None      # (identifier, version) of downloads no image to add uses; plan_sync sets it

    def to_dict(self):
        """Plain data: identifiers and versions of each action, refused lists and what they hold back."""
        return {
            "add": ["%s %s" % (p.identifier, p.version) for p in self.add],
            "keep": ["%s %s" % (s.identifier, s.version) for s in self.keep],
            "retire": ["%s %s" % (s.identifier, s.version) for s in self.retire],
            "held": ["%s %s" % (s.identifier, s.version) for s in self.held],
            "refused": [dict(item) for item in self.refused],
            "conflicts": list(self.conflicts),
            "discard": ["%s %s" % pair for pair in self.stale_downloads or ()],
        }

    def diff(self):
        """before/after text for Ansible's diff: one line per image held (identifier, version, title)."""
        def line(identifier, version, title):
            return "%s %s (%s)\n" % (identifier, version, title)
        before = [line(s.identifier, s.version, s.title) for s in self.keep + self.held + self.retire]
        after = [line(s.identifier, s.version, s.title) for s in self.keep + self.held]
        after += [line(p.identifier, p.version, p.image.title) for p in self.add]
        return {"before": "".join(sorted(before)), "after": "".join(sorted(after))}


def _subscription(entry):
    """The site's subscription (source URL, endorser, list UUID) from a ``lists`` entry."""
    identifier = entry.get("identifier") or entry.get("expected_identifier")
    return {"src": entry["src"], "endorser": entry.get("endorser"), "identifier": identifier.lower() if identifier else None}


KEPT_DIR = ".kept"      # in the state directory; never an endorser's name (those start with a letter or digit)


class KeptCopies(object):
    """The signed list bytes and the checked torrents a download phase verified, kept in the host's state directory
    for the activation of the same rollout, so that it needs neither the repository nor the torrents' server.

    Layout: ``<state_dir>/.kept/lists/<endorser>/<list uuid>.list`` (the signed envelope, byte for byte) and
    ``<state_dir>/.kept/torrents/<torrent sha256>.torrent``; directories 0700, files 0600, root's (the module's
    user), written atomically; never read beyond MAX_ENVELOPE_BYTES / MAX_TORRENT_BYTES. A kept copy is only a
    copy: every check runs again on it (:func:`verify_lists` with ``kept``, the torrent checks of :func:`transfer`
    against the signed list).
    """

    def __init__(self, state_dir):
        self.root = os.path.join(state_dir, KEPT_DIR)

    def list_path(self, subscription):
        """Where the list of a subscription (``src``, ``endorser``, ``identifier``) is kept."""
        endorser, identifier = subscription.get("endorser"), subscription.get("identifier")
        if not is_endorser_name(endorser) or not is_lower_uuid(identifier):
            raise VmicError("image list %s: endorser %r and list UUID %r cannot name a kept copy" % (subscription.get("src"), endorser, identifier))
        return os.path.join(self.root, "lists", endorser, "%s.list" % identifier)

    def torrent_path(self, sha256):
        """Where the torrent whose sha256 the signed list gives is kept."""
        if not is_hex64(sha256):
            raise TorrentError("torrent sha256 %r cannot name a kept copy" % (sha256,))
        return os.path.join(self.root, "torrents", "%s.torrent" % sha256)

    def read_list(self, subscription):
        """The kept envelope of a subscription's list, or None when none is kept; VmicError when it is unusable."""
        path = self.list_path(subscription)
        return _read_private(path, MAX_ENVELOPE_BYTES, "kept copy %s of image list %s" % (path, subscription["src"]))

    def read_torrent(self, sha256, what):
        """The kept torrent with this sha256, or None; VmicError when it is unusable."""
        path = self.torrent_path(sha256)
        return _read_private(path, MAX_TORRENT_BYTES, "%s: kept torrent %s" % (what, path))

    def keep_list(self, subscription, envelope):
        """Keep a verified list's envelope (replacing the copy of an earlier download phase)."""
        _write_private(self.root, self.list_path(subscription), envelope, MAX_ENVELOPE_BYTES)

    def keep_torrent(self, sha256, data):
        """Keep a checked torrent."""
        _write_private(self.root, self.torrent_path(sha256), data, MAX_TORRENT_BYTES)

    def drop_list(self, subscription):
        """Forget the kept list of a subscription (none kept, or names that cannot name one: nothing to do)."""
        try:
            path = self.list_path(subscription or {})
        except VmicError:
            return
        _unlink(path)

    def drop_torrents(self):
        """Forget every kept torrent."""
        directory = os.path.join(self.root, "torrents")
        for name in _listdir(directory):
            if name.endswith(".torrent"):
                _unlink(os.path.join(directory, name))

    def keep_for_activation(self, verdicts, activation_follows):
        """After a download phase's verification: keep each valid list, forget the copy of each refused one and every
        torrent of an earlier download (this download keeps its own). Without an activation to follow (the host holds its
        set) nothing is kept."""
        self.drop_torrents()
        for verdict in verdicts:
            subscription = verdict.subscription
            if activation_follows and verdict.valid and getattr(verdict, "envelope", None) is not None:
                self.keep_list(subscription, verdict.envelope)
            else:
                self.drop_list(subscription)

    def activated(self, verdicts):
        """After a successful commit: forget the kept copies of the lists it applied, and every kept torrent when no list
        was refused. What a refused list needs stays as it was (the next download phase replaces it)."""
        for verdict in verdicts:
            if verdict.valid:
                self.drop_list(verdict.subscription)
        if all(verdict.valid for verdict in verdicts):
            self.drop_torrents()


def _read_private(path, max_bytes, what):
    """The bytes of a kept file (None when there is none): a regular file of this user, mode 0600 or stricter, at most
    ``max_bytes``; anything else is a VmicError naming ``what``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VmicError("%s: %s" % (what, exc.strerror or exc))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not S_ISREG(info.st_mode):
            raise VmicError("%s: not a regular file" % what)
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise VmicError("%s: owned by uid %d with mode %04o, not this user's and private (0600)" % (what, info.st_uid, info.st_mode & 0o7777))
        if info.st_size > max_bytes:
            raise LimitError("%s: %d bytes, larger than the limit of %d bytes" % (what, info.st_size, max_bytes))
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LimitError("%s: larger than the limit of %d bytes" % (what, max_bytes))
    return data


def _write_private(root, path, data, max_bytes):
    """Write a kept file atomically (0600), its directories under ``root`` 0700."""
    if len(data) > max_bytes:
        raise LimitError("%s: %d bytes, larger than the limit of %d bytes; not kept" % (path, len(data), max_bytes))
    state_dir = os.path.dirname(root)
    try:
        if not os.path.isdir(state_dir):
            os.makedirs(state_dir, 0o750)
        directory = root
        for part in [""] + os.path.relpath(os.path.dirname(path), root).split(os.sep):
            directory = os.path.join(directory, part) if part else directory
            if not os.path.isdir(directory):
                os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)
        write_atomic(path, bytes(data), 0o600)
    except OSError as exc:
        raise VmicError("cannot keep %s for the activation: %s" % (path, exc.strerror or exc))


def _listdir(directory):
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise VmicError("cannot read %s: %s" % (directory, exc.strerror or exc))


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise VmicError("cannot remove the kept copy %s: %s" % (path, exc.strerror or exc))


def verify_lists(lists, trust, registry, state, allow_legacy_digests=False, record=True, https_ca_file=None, allow_http=False,
                 timeout=30, fetch=fetch_bytes, now=None, kept=None):
    """Fetch and verify every subscribed list, each on its own; returns :class:`listverify.ListVerdict` objects
    (refused ones included).

    Each entry of ``lists`` is a subscription: ``src``, ``endorser`` (a name of the registry) and
    ``identifier`` (the list UUID). The verdict of each carries its subscription, so that a refused
    list still names whose images it covers, and the envelope it was verified from (``envelope``, for
    :meth:`KeptCopies.keep_for_activation`). ``fetch`` is :func:`fetch.fetch_bytes` or a function with
    its signature (tests pass an in-memory repository); ``now`` the time lists are judged at (default: now).

    With ``kept`` (:class:`KeptCopies`, an activation) a list the download phase kept is verified from that copy,
    offline, with every check (signature, CA pin, site CRLs, expiry, rollback floor of the state, subscription) and is
    not fetched; ``kept_copy`` of its verdict says so (None: fetched, "used", "refused" or "superseded", with
    ``kept_reason``). A kept copy below the version the state accepted since, or with
    other bytes at that version, is superseded: refused as a rollback, forgotten, and the list is fetched. Any other
    refusal of a kept copy (tampered, another endorser's or list's, oversized, expired) refuses the list: its images
    stay as they are and it is not fetched, so that an activation never applies another list than the one the
    download phase verified.
    """
    verdicts = []
    for entry in lists:
        subscription = _subscription(entry)
        source = subscription["src"]
        verdict, superseded = None, None
        options = dict(trust=trust, registry=registry, expected_identifier=subscription["identifier"],
                       expected_endorser=subscription["endorser"], allow_legacy_digests=allow_legacy_digests, now=now)
        if kept is not None:
            verdict, superseded = _verify_kept(kept, subscription, state, record, options)
        if verdict is None:
            envelope = None
            try:
                envelope = fetch(source, MAX_ENVELOPE_BYTES, timeout=timeout, ca_file=https_ca_file, allow_http=allow_http, what="image list")
                verdict = verify_image_list(envelope, source, state=state, record=record, **options)
            except MissingDependencyError:
                raise
            except VmicError as exc:
                # Unreachable, too slow, too large, a corrupt state file: this list is refused, the others go on.
                verdict = ListVerdict.unreadable(source, str(exc))
            verdict.envelope = envelope
            verdict.kept_copy = "superseded" if superseded else None
            verdict.kept_reason = superseded
        verdict.subscription = subscription
        verdicts.append(verdict)
    return verdicts


def _verify_kept(kept, subscription, state, record, options):
    """(verdict, None) on a subscription's kept list copy (see :func:`verify_lists`); (None, None) when none is kept and
    (None, why) when the copy is superseded: the list is to be fetched."""
    source = subscription["src"]
    refused = "image list %s: the copy the download phase kept is refused, the list is not fetched in this run" % source
    try:
        envelope = kept.read_list(subscription)
    except MissingDependencyError:
        raise
    except VmicError as exc:
        verdict = ListVerdict.unreadable(source, refused)
        verdict.reasons.append(str(exc))
        verdict.kept_copy, verdict.kept_reason = "refused", None
        return verdict, None
    if envelope is None:
        return None, None
    try:
        verdict = verify_image_list(envelope, source, state=state, record=record, **options)
        if not verdict.valid and verify_image_list(envelope, source, state=None, record=False, **options).valid:
            # valid but for the state's floor: the host accepted a newer list since (another run), so fetch
            if record:
                kept.drop_list(subscription)
            return None, "image list %s: the kept copy %s is superseded, the list is fetched: %s" % (
                source, kept.list_path(subscription), "; ".join(verdict.reasons))
    except MissingDependencyError:
        raise
    except VmicError as exc:
        verdict = ListVerdict.unreadable(source, str(exc))
    verdict.envelope = envelope
    verdict.kept_copy, verdict.kept_reason = "used" if verdict.valid else "refused", None
    if not verdict.valid:
        verdict.reasons.insert(0, "%s (%s)" % (refused, kept.list_path(subscription)))
    return verdict, None


def _owner_status(verdicts):
    """(endorser, list UUID) -> "valid", "refused" or "revoked", from the subscriptions' verdicts."""
    status = {}
    for verdict in verdicts:
        subscription = verdict.subscription or {}
        key = (subscription.get("endorser"), subscription.get("identifier"))
        if verdict.valid:
            status[key] = "valid"
        elif verdict.revoked:
            status[key] = "revoked"
        else:
            status.setdefault(key, "refused")
    return status


def _held_owner(stored, owners):
    """The status of the subscription a held image came from (None: no longer subscribed)."""
    endorser, list_identifier = stored.endorser, stored.list_identifier
    if endorser is not None:
        return owners.get((endorser, list_identifier))
    # Images committed before the store recorded endorsers: matched by list UUID alone.
    found = [value for (_endorser, identifier), value in owners.items() if identifier == list_identifier]
    return found[0] if len(found) == 1 else None


def plan_sync(verdicts, policy, profile, store, known=()):
    """Decide what to add, keep, hold and retire for this host.

    Each list is judged on its own: a refused list holds its images exactly as they are and blocks
    nothing else; a list whose signer is revoked has its images retired; an image whose list is no
    longer subscribed is retired. ``known`` are the identities the site approved before (approvedset).
    """
    plan = SyncPlan()
    plan.verdicts = verdicts
    plan.refused = [dict(source=v.source, endorser=(v.subscription or {}).get("endorser"), identifier=(v.subscription or {}).get("identifier"),
                         revoked=bool(v.revoked), reasons=list(v.reasons)) for v in verdicts if not v.valid]
    owners = _owner_status(verdicts)
    held = store.images()
    # What this host holds keeps its identifier against a newcomer from another endorser.
    incumbents = [identity(s.endorser, s.identifier) for s in held if s.endorser]
    decisions = evaluate(policy, verdicts, known=known, incumbents=incumbents)
    host = HostProfile("this host", profile or {})
    for decision in decisions:
        if host.selects(decision):
            candidate = decision.candidate
            plan.desired.append(PlannedImage(candidate.image, candidate.list_identifier, candidate.endorser))
    wanted = dict(((p.endorser, p.identifier, p.version), p) for p in plan.desired)
    for stored in held:
        owner = _held_owner(stored, owners)
        if owner == "refused":
            plan.held.append(stored)
            continue
        endorser = stored.endorser
        planned = None
        if owner == "valid":
            candidates = [p for (e, i, v), p in wanted.items() if (e == endorser or endorser is None) and i == stored.identifier and v == stored.version]
            planned = candidates[0] if len(candidates) == 1 else None
        if planned is not None and stored.sha512 == planned.sha512:
            plan.keep.append(stored)
        else:
            plan.retire.append(stored)
    kept = set((s.identifier, s.version) for s in plan.keep)
    retiring = set((s.identifier, s.version) for s in plan.retire)
    held_by = dict((s.identifier, s.endorser) for s in plan.held)
    plan.add = []
    for planned in plan.desired:
        if (planned.identifier, planned.version) in kept:
            continue
        if (planned.identifier, planned.version) in retiring:
            # The store's place for it is taken by the held image being retired (another endorser's, or other
            # bytes): that one goes first, this one comes with the next run.
            plan.conflicts.append("image %s of endorser %s deferred to the next run: the store holds %s %s, retired in this run"
                                  % (planned.describe(), planned.endorser, planned.identifier, planned.version))
            continue
        if planned.identifier in held_by and held_by[planned.identifier] != planned.endorser:
            plan.conflicts.append("image %s of endorser %s not added: the store holds identifier %s of endorser %s, whose list is refused"
                                  % (planned.describe(), planned.endorser, planned.identifier, held_by[planned.identifier]))
            continue
        plan.add.append(planned)
    plan.stale_downloads = _stale_downloads(plan, store)
    return plan


def _stale_downloads(plan, store):
    """(identifier, version) of the store's download directories that no image to add uses.

    None while a list is refused (not for a revoked signer): a download is not tied to its list, and the refused one
    may be the list that names it (a list held back is not a list withdrawn); the next run that judges every list
    decides."""
    if any(not item["revoked"] for item in plan.refused):
        return []
    adding = set((p.identifier, p.version) for p in plan.add)
    return [pair for pair in store.partials() if pair not in adding]


def _torrent_for(planned, torrent_module, https_ca_file, timeout, allow_http=False, fetch=fetch_bytes, kept=None, from_kept=False):
    """The image's .torrent (bytes) and its checked metadata: fetched from the signed vmic:torrent URL, its sha256,
    file name, size and info-hashes checked against the signed list before anything else reads it.

    With ``kept`` (:class:`KeptCopies`): ``from_kept`` (an activation) takes the torrent the download phase kept, when
    there is one, instead of fetching it (checked the same way; a kept torrent that fails is refused, not replaced);
    otherwise (a download) the checked torrent is kept."""
    image = planned.image
    for field, value in ((TORRENT_URI, image.torrent_uri), (TORRENT_SHA256, image.torrent_sha256), (BTIH_V1, image.btih_v1),
                         (BTIH_V2, image.btih_v2)):
        if not value:
            raise TorrentError("image %s: the signed list gives no %s" % (planned.describe(), field))
    try:
        name = image.file_name
    except ImageListError as exc:
        raise TorrentError(str(exc))
    data = kept.read_torrent(image.torrent_sha256, "image %s" % planned.describe()) if kept is not None and from_kept else None
    from_copy = data is not None
    if not from_copy:
        # Like the lists: HTTPS with the site's CA options (http only where allowed), never a local path.
        data = fetch(image.torrent_uri, MAX_TORRENT_BYTES, timeout=timeout, ca_file=https_ca_file, allow_http=allow_http, what="torrent",
                     allow_local=False)
    try:
        meta = torrent_module.check_torrent(data, expected_name=name, expected_size=planned.size, expected_v1=image.btih_v1,
                                            expected_v2=image.btih_v2, expected_sha256=image.torrent_sha256)
    except TorrentError as exc:
        if from_copy:
            raise TorrentError("image %s: the torrent the download phase kept (%s) is refused: %s"
                               % (planned.describe(), kept.torrent_path(image.torrent_sha256), exc))
        raise
    if kept is not None and not from_kept:
        kept.keep_torrent(image.torrent_sha256, data)
    return data, meta


def _write_progress(store, items, started):
    progress = {
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed": round(time.time() - started, 1),
        "images": [dict(identifier=p.identifier, version=p.version, progress=p.status.get("progress", 0.0),
                        state=p.status.get("state"), total_done=p.status.get("total_done", 0), size=p.size) for p in items],
    }
    store.write_progress(progress)


def _engine_owned_dir(path, mode, owner):
    """Create a download directory (its identifier directory 0711); hand it to the engine's user when the engine
    does not run as root (rtorrent). Only download directories are the engine's: final directories are root's."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.mkdir(parent, 0o711)
    os.chmod(parent, 0o711)        # also one made 0750 by earlier versions, which an engine user could not pass
    if not os.path.isdir(path):
        os.mkdir(path, mode)
    if owner is not None:
        os.chown(path, owner[0], owner[1])


def engine_owner(spec):
    """(uid, gid) of the engine's ``user`` from the engine spec, or None when it runs as root.

    rtorrent always runs as its own user (the rtorrent role): without ``user`` its images would be moved
    by the engine itself and never hashed again after the move, so the spec is refused.
    """
    user = (spec or {}).get("user")
    if (spec or {}).get("kind") == "rtorrent" and (not user or user == "root"):
        raise EngineError("engine rtorrent: give engine.user, the user rtorrent runs as (the rtorrent role's: rtorrent); "
                          "images are then taken from it, re-hashed and made root's before they enter the store")
    if not user or user == "root":
        return None
    import pwd  # pylint: disable=import-outside-toplevel
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise EngineError("engine user %s does not exist on this host" % user)
    return entry.pw_uid, entry.pw_gid


def _same_dir(left, right):
    return left is not None and right is not None and os.path.normpath(str(left)) == os.path.normpath(str(right))


def _engine_status(engine, key):
    found = engine.status(key) if engine is not None and key else []
    return found[0] if found else None


def _assign_sources(plan, store):
    """Which image to add needs a transfer: a held image or another image of this run with the same bytes
    (sha512 and size) is its source instead (a re-endorsement, or one file listed under two identifiers)."""
    held = {}
    for stored in store.images():
        key = (stored.sha512, stored.size)
        if key not in held and os.path.isfile(stored.path) and not os.path.islink(stored.path):
            held[key] = stored
    leaders = {}
    for planned in plan.add:
        key = (planned.sha512, planned.size)
        planned.source = held.get(key)
        planned.leader = None
        if planned.source is None:
            planned.leader = leaders.get(key)
            if planned.leader is None:
                leaders[key] = planned
    return [planned for planned in plan.add if planned.source is None and planned.leader is None]


def _stale_partial(store, plan, directory):
    """(identifier, version) when ``directory`` is a download directory of this store that no image to add uses."""
    adding = set((p.identifier, p.version) for p in plan.add)
    for identifier, version in store.partials():
        if (identifier, version) not in adding and _same_dir(store.partial_dir(identifier, version), directory):
            return identifier, version
    return None


def _orphan_final(store, directory):
    """(identifier, version) when ``directory`` is a final directory of a version the store does not hold.

    Only an interrupted commit leaves one (the file is moved before its metadata is written): its file
    was never visible in the store, so it may be taken back or removed.
    """
    if not directory:
        return None
    parent, version = os.path.split(os.path.normpath(directory))
    root, identifier = os.path.split(parent)
    if not _same_dir(root, store.store_dir):
        return None
    try:
        if not _same_dir(store.final_dir(identifier, version), directory):
            return None
    except StoreError:
        return None
    return None if store.find(identifier, version) is not None else (identifier, version)


def _start_download(plan, store, engine, planned, data, meta, owner):
    """Hand a torrent to the engine, saving into this image's download directory; return None or why not.

    An engine that already holds the torrent elsewhere is not a download: a stale download of this store (an
    image withdrawn or re-versioned before activation) is taken over (its data moved here by us); any other
    directory is left alone and the image fails.
    """
    partial = store.partial_dir(planned.identifier, planned.version)
    _engine_owned_dir(partial, 0o750, owner)
    key = meta.info_hash_v1
    current = _engine_status(engine, key)
    if current is not None and not _same_dir(current.get("save_dir"), partial):
        stale = _stale_partial(store, plan, current.get("save_dir"))
        orphan = _orphan_final(store, current.get("save_dir")) if stale is None else None
        if stale is None and orphan is None:
            return ("image %s: the engine already holds its torrent %s in %s, not in its download directory %s; "
                    "nothing was downloaded or deleted" % (planned.describe(), key, current.get("save_dir"), partial))
        stale_dir = store.partial_dir(*stale) if stale is not None else store.final_dir(*orphan)
        engine.remove(key, delete_files=False, save_dir=stale_dir, name=meta.name)
        source, target = os.path.join(stale_dir, meta.name), os.path.join(partial, meta.name)
        if os.path.isfile(source) and not os.path.islink(source) and not os.path.lexists(target):
            os.rename(source, target)      # the engine checks these pieces again when it is added
    planned.key = engine.add(data, partial)
    current = _engine_status(engine, planned.key)
    if current is None or not _same_dir(current.get("save_dir"), partial):
        planned.key = None
        return ("image %s: the engine did not take its torrent %s into %s (it says %s); nothing was downloaded or deleted"
                % (planned.describe(), key, partial, (current or {}).get("save_dir")))
    return None


def _drop_download(store, engine, planned):
    """After a verification failure: forget the engine's torrent only when it saves into this image's download
    directory (never asking the engine to delete anything), then delete that directory ourselves."""
    partial = store.partial_dir(planned.identifier, planned.version)
    current = _engine_status(engine, planned.key)
    if current is not None and _same_dir(current.get("save_dir"), partial):
        engine.remove(planned.key, delete_files=False, save_dir=partial, name=planned.name)
    store.discard_partial(planned.identifier, planned.version)


def _poll_downloads(plan, store, engine, pending, started):
    """One look at the engine: each image of ``pending`` that finished or failed leaves it (in place); the progress
    file is written. Returns the failures (engine error, torrent lost)."""
    failures = []
    statuses = dict((s["key"], s) for s in engine.status())
    for planned in list(pending):
        status = statuses.get(planned.key)
        if status is None:
            failures.append("image %s: the engine lost the torrent" % planned.describe())
            pending.remove(planned)
            continue
        planned.status = status
        if status.get("error"):
            failures.append("image %s: engine error: %s" % (planned.describe(), status["error"]))
            pending.remove(planned)
        elif status.get("total_done", 0) >= planned.size and status.get("state") in ("seeding", "finished"):
            planned.finished = time.time()
            pending.remove(planned)
    _write_progress(store, plan.add, started)
    return failures


def _wait_downloads(plan, store, engine, leaders, deadline, poll, started):
    failures = []
    pending = list(leaders)
    while pending:
        failures.extend(_poll_downloads(plan, store, engine, pending, started))
        if pending and time.time() > deadline:
            failures.extend("image %s: not complete by the deadline (%.0f%%)" % (p.describe(), 100 * p.status.get("progress", 0.0))
                            for p in pending)
            break
        if pending:
            time.sleep(poll)
    return failures


def _take_from_engine(store, engine, planned, owner):
    """Move a verified download into its final directory (root's, 0755) and make the file root's and read-only.

    A root engine (libtorrent) moves its own file. An engine with its own user (rtorrent) could change the file
    until it no longer can: it is removed from the engine (files closed), root renames the file (paths from the
    checked torrent, never from the engine's answers), takes it over (no process of another user may still
    write it) and hashes it again; the engine then seeds it from there, read-only.
    Returns None or the reason the file is wrong.
    """
    partial = store.partial_dir(planned.identifier, planned.version)
    final = store.make_final_dir(planned.identifier, planned.version)
    target = os.path.join(final, planned.name)
    if owner is None:
        engine.move(planned.key, final, partial, planned.name)
        _wait_moved(planned, final)
        return None
    engine.remove(planned.key, delete_files=False, save_dir=partial, name=planned.name)
    source = os.path.join(partial, planned.name)
    if not os.path.isfile(source) or os.path.islink(source):
        return "image %s: downloaded file %s is not a regular file" % (planned.describe(), source)
    if os.path.lexists(target):
        return "image %s: %s already exists" % (planned.describe(), target)
    os.rename(source, target)
    planned.taken = True
    secure_file(target, "image %s" % planned.describe())
    return check_file(target, planned.sha512, planned.size, "image %s: downloaded file" % planned.describe())


def _discard_taken(store, planned):
    """Delete a download that failed its check after :meth:`_take_from_engine` (our own directories only)."""
    store.discard_partial(planned.identifier, planned.version)
    final = store.final_dir(planned.identifier, planned.version)
    target = os.path.join(final, planned.name)
    if planned.taken and os.path.lexists(target):
        os.unlink(target)
    store.remove_final_dir(planned.identifier, planned.version)


def _give_back(store, engine, planned, data):
    """Undo :meth:`_take_from_engine` for an image that verified while another did not: back into its download
    directory, seeded from there (read-only now), so the next run commits it."""
    final = store.final_dir(planned.identifier, planned.version)
    partial = store.partial_dir(planned.identifier, planned.version)
    os.rename(os.path.join(final, planned.name), os.path.join(partial, planned.name))
    store.remove_final_dir(planned.identifier, planned.version)
    engine.add(data, partial, seed_mode=True)


def _meta(planned, key):
    return {"sha512": planned.sha512, "size": planned.size, "list": planned.list_identifier, "title": planned.image.title,
            "btih_v1": planned.image.btih_v1, "btih_v2": planned.image.btih_v2, "engine_key": key, "endorser": planned.endorser}


def transfer(plan, store, engine, torrent_module, deadline, https_ca_file=None, timeout=30, poll=1.0, commit=True, owner=None,
             allow_http=False, fetch=fetch_bytes, wait=True, kept=None, linger=0.0):
    """Download and verify every image to add; commit all only when all verified. Returns per-image results.

    An image whose bytes (sha512 and size) a held image or another image of this run already has is not
    downloaded: its file is hard-linked from there (a re-endorsement under a new version, one file under two
    identifiers). Nothing is ever deleted but this run's own download directories.

    With ``commit=False`` (the download phase of a rollout) verified data stays in the partial area,
    seeded by the engine, and the store is not changed; a later call with ``commit=True`` finds it
    complete, verifies it again and commits it.

    With ``wait=False`` (only with ``commit=False``) the checked torrents are handed to the engine and the call
    returns at once: the engine downloads on its own into the partial area; nothing is verified or committed
    (a later call with ``commit=True`` waits, verifies every byte and commits). Each result then carries the
    torrent's ``key`` (v1 info-hash), ``size`` and ``total_done`` so that a waiter can follow it in the engine.
    ``linger`` seconds (at most, never past ``deadline``) it looks again while a download is not finished: one that
    finishes meanwhile is reported ``downloaded``, and a waiter need not read it again.

    With ``kept`` (:class:`KeptCopies`) a download (``commit=False``) keeps every checked torrent there and a commit takes
    the kept one instead of fetching it (checked against the signed list all the same), so that an activation needs no
    server once every piece is in the swarm.
    """
    if commit and not wait:
        raise VmicError("transfer: wait=False never commits (give commit=False)")
    if not plan.add:
        return []
    store.ensure()
    leaders = _assign_sources(plan, store)
    need = sum(p.size for p in leaders)
    for planned in leaders:
        partial = os.path.join(store.partial_dir(planned.identifier, planned.version))
        if os.path.isdir(partial):
            for name in os.listdir(partial):
                try:
                    need -= min(os.path.getsize(os.path.join(partial, name)), planned.size)
                except OSError:
                    pass
    free = store.free_bytes()
    if need > free:
        raise StoreError("image store %s: too little disk: %d bytes needed, %d free; nothing was changed" % (store.store_dir, need, free))

    torrents = dict((id(planned), _torrent_for(planned, torrent_module, https_ca_file, timeout, allow_http, fetch, kept, commit))
                    for planned in plan.add)
    for planned in plan.add:
        planned.name = torrents[id(planned)][1].name
        planned.started = time.time()
    failures = []
    by_key = {}
    for planned in leaders:
        other = by_key.setdefault(torrents[id(planned)][1].info_hash_v1, planned)
        if other is not planned:
            failures.append("images %s and %s: the same torrent %s, but the signed list gives them different sha512 or size"
                            % (other.describe(), planned.describe(), torrents[id(planned)][1].info_hash_v1))
    if failures:
        raise TransferFailed(failures, plan.add)
    started = time.time()
    for planned in leaders:
        data, meta = torrents[id(planned)]
        reason = _start_download(plan, store, engine, planned, data, meta, owner)
        if reason:
            failures.append(reason)
    if not wait:
        return _started(plan, store, engine, leaders, failures, started, min(time.time() + max(0.0, linger), deadline), poll)
    if not failures:
        failures = _wait_downloads(plan, store, engine, leaders, deadline, poll, started)
    if not failures:
        for planned in leaders:
            reason = store.verify_partial(planned.identifier, planned.version, planned.name, planned.sha512, planned.size)
            if reason:
                failures.append(reason)
                _drop_download(store, engine, planned)
        for planned in plan.add:
            if planned.source is not None:
                planned.finished = time.time()
                what = "image %s: held image %s %s with the same bytes" % (planned.describe(), planned.source.identifier, planned.source.version)
                try:
                    # root's and read-only before it is hashed (stores of earlier releases left images to the
                    # engine's user), so the bytes checked are the bytes linked
                    secure_file(planned.source.path, what)
                    reason = check_file(planned.source.path, planned.sha512, planned.size, what)
                except StoreError as exc:
                    reason = str(exc)
                if reason:
                    failures.append(reason)
    for planned in plan.add if commit else ():
        target = os.path.join(store.final_dir(planned.identifier, planned.version), planned.name)
        if os.path.lexists(target) and not os.path.isdir(target) and _orphan_final(store, os.path.dirname(target)):
            os.unlink(target)   # left by an interrupted commit: never in the store, never visible
        if os.path.lexists(target):
            failures.append("image %s: %s already exists, though the store does not hold this version" % (planned.describe(), target))
    if failures:
        raise TransferFailed(failures, plan.add)

    if not commit:
        return [_result(planned, "downloaded", store.partial_dir(planned.identifier, planned.version)) if planned in leaders
                else _result(planned, "ready (same bytes as %s)" % _source_name(planned), os.path.dirname(_source_path(store, planned, False)))
                for planned in plan.add]
    taken = []
    for planned in leaders:
        try:
            reason = _take_from_engine(store, engine, planned, owner)
        except StoreError as exc:
            reason = str(exc)
        if reason:
            # the file changed after its first check, or a process of the engine's user can still write it
            failures.append(reason)
            _discard_taken(store, planned)
            break
        taken.append(planned)
    if failures:
        for planned in taken:
            _give_back(store, engine, planned, torrents[id(planned)][0])
        raise TransferFailed(failures, plan.add)

    results = []
    for planned in leaders:
        final = store.final_dir(planned.identifier, planned.version)
        store.commit(planned.identifier, planned.version, planned.name, _meta(planned, planned.key), torrent=torrents[id(planned)][0])
        if owner is not None:
            engine.add(torrents[id(planned)][0], final, seed_mode=True)
        store.discard_partial(planned.identifier, planned.version)
        results.append(_result(planned, "added", final))
    for planned in plan.add:
        if planned in leaders:
            continue
        data, meta = torrents[id(planned)]
        source = _source_path(store, planned, True)
        linked = store.link_from(source, planned.identifier, planned.version, planned.name)
        if not os.path.samestat(os.stat(source), os.stat(linked)) or os.path.getsize(linked) != planned.size:
            raise StoreError("image %s: %s is not the verified file %s" % (planned.describe(), linked, source))
        final = os.path.dirname(linked)
        store.commit(planned.identifier, planned.version, planned.name, _meta(planned, meta.info_hash_v1), torrent=data)
        if engine is not None and _engine_status(engine, meta.info_hash_v1) is None:
            engine.add(data, final, seed_mode=True)
        results.append(_result(planned, "added (same bytes as %s, no transfer)" % _source_name(planned), final))
    return results


def _started(plan, store, engine, leaders, failures, started, until, poll):
    """The results of a transfer that does not wait: a look at the engine (writing the progress file), again every
    ``poll`` seconds (at most 0.5) until every download finished or the time is ``until``, then per image its download
    (``downloading`` or ``downloaded``, with ``key``, ``size`` and ``total_done``) or its source of the same bytes.
    Raises TransferFailed when the engine refused or lost a torrent (the store is not changed)."""
    pending = [planned for planned in leaders if planned.key is not None]
    if not failures:
        failures = _poll_downloads(plan, store, engine, pending, started)
    while pending and not failures and time.time() < until:
        time.sleep(max(0.0, min(poll, 0.5, until - time.time())))
        failures = _poll_downloads(plan, store, engine, pending, started)
    if failures:
        raise TransferFailed(failures, plan.add)
    results = []
    for planned in plan.add:
        if planned in leaders:
            result = _result(planned, "downloading" if planned in pending else "downloaded",
                             store.partial_dir(planned.identifier, planned.version))
            result.update(key=planned.key, size=planned.size, total_done=min(planned.status.get("total_done", 0), planned.size))
        else:
            result = _result(planned, "ready (same bytes as %s)" % _source_name(planned), os.path.dirname(_source_path(store, planned, False)))
        results.append(result)
    return results


def _root_read_only(store, image):
    """Whether a held image is root's and read-only as :meth:`ImageStore.take_ownership` leaves it (nothing changed)."""
    directory = store.final_dir(image.identifier, image.version)
    for path, mode in ((os.path.dirname(directory), 0o755), (directory, 0o755), (image.path, 0o444)):
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if S_ISLNK(info.st_mode) or (os.geteuid() == 0 and (info.st_uid, info.st_gid) != (0, 0)) or (info.st_mode & 0o7777) != mode:
            return False
    return True


def needs_activation(plan, store):
    """Whether the activation phase would change anything on this host: an image to add, one to retire, a stale
    download to discard, or a held image to make root's and read-only. False is the no-op fast path: a host
    that holds its approved, selected set needs no activation run."""
    if plan.add or plan.retire or plan.stale_downloads:
        return True
    return not all(_root_read_only(store, image) for image in plan.keep)


def _source_path(store, planned, committed):
    """The verified file with this image's bytes: a held image's, or that of the image of this run that brings them."""
    if planned.source is not None:
        return planned.source.path
    leader = planned.leader
    directory = store.final_dir if committed else store.partial_dir
    return os.path.join(directory(leader.identifier, leader.version), leader.name)


def _source_name(planned):
    source = planned.source or planned.leader
    return "%s %s" % (source.identifier, source.version)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _result(planned, action, directory):
    status = planned.status
    added, completed = status.get("added_at"), status.get("completed_at")
    return {
        "identifier": planned.identifier, "version": planned.version, "title": planned.image.title, "action": action,
        "seconds": round((planned.finished or time.time()) - planned.started, 2),
        "transfer_seconds": round(completed - added, 1) if _number(added) and _number(completed) and completed >= added else None,
        "bytes_from_peers": status.get("bytes_from_peers", 0), "bytes_from_web_seed": status.get("bytes_from_web_seed", 0),
        "bytes_from_seeds": status.get("bytes_from_seeds", 0), "path": os.path.join(directory, planned.name),
    }


def _wait_moved(planned, final):
    target = os.path.join(final, planned.name)
    limit = time.time() + 60
    while not os.path.isfile(target):
        if time.time() > limit:
            raise EngineError("image %s: the engine did not move it to %s" % (planned.describe(), final))
        time.sleep(0.1)


class TransferFailed(VmicError):
    """Some downloads failed; nothing was committed."""

    def __init__(self, failures, planned):
        self.failures = failures
        self.planned = planned
        super(TransferFailed, self).__init__("; ".join(failures) + "; the image store was not changed")


def _stop_seeding(store, engine, image, remaining):
    """Stop the engine seeding a retired image; an image that stays and has the same torrent is seeded instead.

    Returns None or why the engine could not be told.
    """
    key = image.engine_key
    if not key or engine is None:
        return None
    try:
        current = _engine_status(engine, key)
        if current is None or not _same_dir(current.get("save_dir"), image.directory):
            return None            # the engine seeds this torrent from an image that stays (or not at all)
        engine.remove(key, delete_files=False)
        for other in remaining:
            data = other.torrent() if other.engine_key == key else None
            if data is not None and os.path.isfile(other.path):
                engine.add(data, other.directory, seed_mode=True)
                break
    except VmicError as exc:
        return str(exc)
    return None


def discard_stale_downloads(plan, store, engine):
    """Delete download directories that no image to add uses (withdrawn or re-versioned before activation);
    the engine forgets their torrents first (never deleting data itself). Returns what was discarded."""
    stale = _stale_downloads(plan, store) if plan.stale_downloads is None else plan.stale_downloads
    if not stale:
        return []
    statuses = engine.status() if engine is not None else []
    discarded = []
    for identifier, version in stale:
        directory = store.partial_dir(identifier, version)
        for status in statuses:
            if _same_dir(status.get("save_dir"), directory):
                engine.remove(status["key"], delete_files=False)
        store.discard_partial(identifier, version)
        discarded.append({"identifier": identifier, "version": version, "action": "discarded download"})
    return discarded


def retire(plan, store, engine, mode, grace=3.0):
    """Retire images no longer selected; never one that is open. Returns (retired, kept_in_use).

    A retired image stops being seeded first (also one kept because it is open); downloads that no image to
    add uses are discarded (their entries in ``retired`` have the action "discarded download").
    """
    remaining = [image for image in store.images() if not any(image.identifier == r.identifier and image.version == r.version
                                                              for r in plan.retire)]
    errors = {}
    for image in plan.retire:
        errors[id(image)] = _stop_seeding(store, engine, image, remaining)
    busy = set(id(image) for image in store.in_use(plan.retire))
    limit = time.time() + grace
    while busy and time.time() < limit:
        # an engine that just stopped seeding may close (unmap) the file a moment later
        time.sleep(0.2)
        busy = set(id(image) for image in store.in_use(plan.retire))
    retired, in_use = [], []
    for image in plan.retire:
        if id(image) in busy:
            in_use.append({"identifier": image.identifier, "version": image.version, "path": image.path})
            continue
        store.retire(image, mode)
        item = {"identifier": image.identifier, "version": image.version, "action": "retired (%s)" % mode}
        if errors[id(image)]:
            item["engine_error"] = errors[id(image)]
        retired.append(item)
    retired.extend(discard_stale_downloads(plan, store, engine))
    return retired, in_use
