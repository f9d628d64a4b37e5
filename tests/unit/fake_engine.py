# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A BitTorrent engine without a daemon, for tests of the sync pipeline: engine.Engine over a simulated swarm.

    engine = FakeEngine(repo.swarm)          # swarm(info_hash_v1) -> the bytes the peers deliver, or None
    engine.misbehave("debian-2.img", CORRUPT)

It reads each torrent as the real engines do (torrent.parse_torrent), "downloads" by writing the swarm's
bytes to ``<save_dir>/<name>``, moves by rename and refuses a move or removal whose directory or name is not
where it holds the torrent (engine.check_location, as the real clients do). Time passes only when the
pipeline polls every torrent (``status()`` without a key, its wait loop): at the first such poll after
``add`` the download is done. A torrent whose file already holds the swarm's bytes is not downloaded again
(as an engine that checks the pieces it has).

Faults, per file name (``misbehave``):

    CORRUPT          writes other bytes of the right size and says seeding
    DONE_EARLY       writes half of the bytes and says seeding, total_done = size
    LIE_SAVE_DIR     says it saves into ``where`` (default: elsewhere) while it writes into the directory it was given
    LOSE             writes half of the bytes, then forgets the torrent
    ERROR            reports an error (a full disk) and writes nothing
    STALL            writes half of the bytes and stays downloading
    REWRITE_ON_REMOVE  downloads correctly; when removed it rewrites the file (an engine user writing after the check)
"""

from __future__ import annotations

import os
import time

from ansible_collections.vmic.fleet.plugins.module_utils.engine import STATUS_FIELDS, Engine, check_location
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import parse_torrent

from simulator import flipped

CORRUPT = "corrupt"
DONE_EARLY = "done early"
LIE_SAVE_DIR = "lie about save_dir"
LOSE = "lose"
ERROR = "error"
STALL = "stall"
REWRITE_ON_REMOVE = "rewrite on remove"
FAULTS = (CORRUPT, DONE_EARLY, LIE_SAVE_DIR, LOSE, ERROR, STALL, REWRITE_ON_REMOVE)

WHERE = "fake engine"


class _Torrent(object):
    def __init__(self, meta, save_dir, seed_mode):
        self.meta = meta
        self.save_dir = save_dir       # where it really writes
        self.done = seed_mode
        self.total_done = meta.size if seed_mode else 0
        self.error = ""
        self.reported_dir = None       # a lie about save_dir
        self.added_at = int(time.time())
        self.completed_at = self.added_at if seed_mode else None

    @property
    def path(self):
        return os.path.join(self.save_dir, self.meta.name)


class FakeEngine(Engine):
    """See the module documentation. ``added`` holds the torrent bytes of every add, ``downloads`` the file
    name of every download written; ``calls`` every request, for tests that check what the pipeline asked."""

    def __init__(self, swarm):
        self.swarm = swarm
        self.torrents = {}
        self.faults = {}
        self.added = []
        self.downloads = []
        self.calls = []

    def misbehave(self, name, fault, where=None):
        """Give the torrent of file ``name`` a fault (one of FAULTS); ``where`` is the directory LIE_SAVE_DIR names."""
        if fault not in FAULTS:
            raise ValueError("unknown fault %r" % (fault,))
        self.faults[name] = (fault, where or "/var/lib/elsewhere")

    def behave(self):
        """Forget every fault."""
        self.faults = {}

    def _fault(self, torrent):
        return self.faults.get(torrent.meta.name, (None, None))

    def _get(self, key, op):
        torrent = self.torrents.get(key)
        if torrent is None:
            raise EngineError("%s: %s: no torrent %s" % (WHERE, op, key))
        return torrent

    # -- Engine ----------------------------------------------------------------------------------

    def add(self, torrent_data, save_dir, seed_mode=False):
        self.calls.append(("add", save_dir, seed_mode))
        try:
            meta = parse_torrent(bytes(torrent_data), what="%s: add" % WHERE)
        except VmicError as exc:
            raise EngineError(str(exc))
        self.added.append(bytes(torrent_data))
        key = meta.info_hash_v1
        if key not in self.torrents:
            torrent = self.torrents[key] = _Torrent(meta, save_dir, seed_mode)
            fault, where = self._fault(torrent)
            if fault == LIE_SAVE_DIR:
                torrent.reported_dir = where
        return key

    def status(self, key=None):
        self.calls.append(("status", key))
        if key is None:
            for torrent in list(self.torrents.values()):
                self._download(torrent)
            return [self._status(torrent) for torrent in self.torrents.values()]
        torrent = self.torrents.get(key)
        return [self._status(torrent)] if torrent is not None else []

    def move(self, key, dest_dir, source_dir=None, name=None):
        self.calls.append(("move", key, dest_dir))
        torrent = self._get(key, "move")
        check_location(WHERE, "move", key, self._status(torrent), source_dir, name)
        os.rename(torrent.path, os.path.join(dest_dir, torrent.meta.name))
        torrent.save_dir = dest_dir
        torrent.reported_dir = None

    def remove(self, key, delete_files=False, save_dir=None, name=None):
        self.calls.append(("remove", key, delete_files))
        torrent = self._get(key, "remove")
        check_location(WHERE, "remove", key, self._status(torrent), save_dir, name)
        if self._fault(torrent)[0] == REWRITE_ON_REMOVE and os.path.isfile(torrent.path):
            with open(torrent.path, "r+b") as handle:
                handle.write(flipped(handle.read(16)))
        if delete_files and os.path.isfile(torrent.path):
            os.unlink(torrent.path)
        del self.torrents[key]

    # -- the simulated download ------------------------------------------------------------------

    def _write(self, torrent, data):
        os.makedirs(torrent.save_dir, exist_ok=True)
        with open(torrent.path, "wb") as handle:
            handle.write(data)
        self.downloads.append(torrent.meta.name)

    def _download(self, torrent):
        """One poll's worth of time: the download finishes (or fails as its fault says)."""
        if torrent.done or torrent.error:
            return
        fault, _where = self._fault(torrent)
        data = self.swarm(torrent.meta.info_hash_v1)
        if fault == ERROR:
            torrent.error = "file error: No space left on device"
            return
        if data is None:
            return                      # no peer has it: stays downloading
        half = data[:len(data) // 2]
        if fault in (DONE_EARLY, LOSE, STALL):
            if not os.path.isfile(torrent.path):
                self._write(torrent, half)
            torrent.total_done = len(half)
            if fault == LOSE:
                del self.torrents[torrent.meta.info_hash_v1]
            elif fault == DONE_EARLY:
                self._finish(torrent)
            return
        if fault == CORRUPT:
            data = flipped(data)
        if not self._holds(torrent, data):
            self._write(torrent, data)
        self._finish(torrent)

    @staticmethod
    def _holds(torrent, data):
        try:
            with open(torrent.path, "rb") as handle:
                return handle.read(len(data) + 1) == data
        except OSError:
            return False

    @staticmethod
    def _finish(torrent):
        torrent.done = True
        torrent.total_done = torrent.meta.size
        torrent.completed_at = int(time.time())

    def _status(self, torrent):
        meta = torrent.meta
        if torrent.error:
            state = "error"
        else:
            state = "seeding" if torrent.done else "downloading"
        status = {
            "key": meta.info_hash_v1, "info_hash_v1": meta.info_hash_v1, "info_hash_v2": meta.info_hash_v2, "name": meta.name,
            "save_dir": torrent.reported_dir or torrent.save_dir, "state": state,
            "progress": float(torrent.total_done) / meta.size, "total_size": meta.size, "total_done": torrent.total_done,
            "bytes_from_peers": torrent.total_done, "bytes_from_web_seed": 0, "bytes_from_seeds": torrent.total_done,
            "upload_total": 0, "num_peers": 1, "num_seeds": 1, "download_rate": 0, "upload_rate": 0, "hashfail_count": 0,
            "banned_peers": 0, "error": torrent.error, "added_at": torrent.added_at, "completed_at": torrent.completed_at,
        }
        assert tuple(status) == STATUS_FIELDS
        return status
