# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's state directory: what a restarted (or killed) engine resumes from.

Per torrent, named by its key (the v1 info-hash, 40 lower-case hex), all written atomically with
mode 0600:

- ``<key>.torrent``: the exact bytes added;
- ``<key>.resume``: libtorrent's resume data (``write_resume_data_buf``);
- ``<key>.state.json``: the engine's own bookkeeping (save_dir, seed_mode, added_at, completed_at,
  the byte counters, and ``moving_to`` while a move is under way).
"""

from __future__ import annotations

import json
import os

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import HEX40_RE, MAX_TORRENT_BYTES

MAX_STATE_BYTES = 64 * 1024
MAX_RESUME_BYTES = 32 * 1024 * 1024
TORRENT, RESUME, STATE = ".torrent", ".resume", ".state.json"
FILE_MODE = 0o600


class StateDir(object):
    """The files of one engine's state directory."""

    def __init__(self, path):
        self.path = path

    def create(self):
        """Make the directory (mode 0700) if it does not exist."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def file(self, key, suffix):
        """Path of one of the files of ``key``."""
        return os.path.join(self.path, key + suffix)

    def keys(self):
        """Keys of the stored torrents, sorted (other files are ignored)."""
        found = []
        for entry in sorted(os.listdir(self.path)):
            if entry.endswith(TORRENT) and HEX40_RE.match(entry[:-len(TORRENT)]):
                found.append(entry[:-len(TORRENT)])
        return found

    def write_torrent(self, key, data):
        """Keep the bytes of an added torrent."""
        write_atomic(self.file(key, TORRENT), data, mode=FILE_MODE)

    def read_torrent(self, key):
        """The bytes of a stored torrent (at most MAX_TORRENT_BYTES)."""
        return read_limited(self.file(key, TORRENT), MAX_TORRENT_BYTES, "torrent %s" % key)

    def write_resume(self, key, data):
        """Keep libtorrent's resume data (bytes) of ``key``."""
        write_atomic(self.file(key, RESUME), data, mode=FILE_MODE)

    def read_resume(self, key):
        """The resume data of ``key``, or None when there is none."""
        path = self.file(key, RESUME)
        if not os.path.exists(path):
            return None
        return read_limited(path, MAX_RESUME_BYTES, "resume data of %s" % key)

    def write_state(self, key, state):
        """Write the state dict of ``key`` (sorted keys, so equal states give equal bytes)."""
        write_atomic(self.file(key, STATE), json.dumps(state, sort_keys=True).encode("utf-8"), mode=FILE_MODE)

    def read_state(self, key):
        """The state dict of ``key``; EngineError when it is not a JSON object with a save_dir."""
        data = read_limited(self.file(key, STATE), MAX_STATE_BYTES, "state of %s" % key)
        try:
            state = json.loads(data.decode("utf-8"))
        except ValueError as exc:
            raise EngineError("state of %s is not JSON: %s" % (key, exc))
        if not isinstance(state, dict) or not isinstance(state.get("save_dir"), str):
            raise EngineError("state file has no save_dir")
        return state

    def forget(self, key):
        """Delete every file of ``key``, the .torrent first: without it a restart restores nothing of ``key``."""
        for suffix in (TORRENT, RESUME, STATE):
            try:
                os.unlink(self.file(key, suffix))
            except FileNotFoundError:
                pass
