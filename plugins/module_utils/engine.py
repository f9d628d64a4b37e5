# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The small interface between ``image_sync`` and a BitTorrent engine daemon.

``Engine`` is what callers use; ``LibtorrentEngineClient`` speaks to the libtorrent engine
service (``engine_service.py``, the package ``_engine``) over its unix socket: one JSON request per
line, one JSON response per line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``
(``_engine/protocol.py``); ``rtorrent_engine.RtorrentEngineClient`` implements the same interface.

Status dictionaries carry the fields of ``STATUS_FIELDS``; a torrent's key is its v1 info-hash
(40 lower-case hex).
"""

from __future__ import annotations

import base64
import os

from ansible_collections.vmic.fleet.plugins.module_utils._engine.protocol import call
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError

DEFAULT_SOCKET = "/run/vmic-engine/engine.sock"

STATES = ("checking", "downloading", "seeding", "paused", "error")

STATUS_FIELDS = (
    "key", "info_hash_v1", "info_hash_v2", "name", "save_dir", "state", "progress", "total_size", "total_done",
    "bytes_from_peers", "bytes_from_web_seed", "bytes_from_seeds", "upload_total", "num_peers", "num_seeds",
    "download_rate", "upload_rate", "hashfail_count", "banned_peers", "error", "added_at", "completed_at",
)


class Engine(object):
    """A BitTorrent engine that downloads and keeps seeding single-file torrents."""

    def add(self, torrent_data, save_dir, seed_mode=False):
        """Add a torrent (bytes of the .torrent) saving into ``save_dir``; return its key (v1 info-hash hex).

        ``seed_mode`` trusts that ``save_dir`` already holds the verified file (no hashing).
        Adding a torrent that is already present returns its key and changes nothing.
        """
        raise EngineError("%s does not implement add" % type(self).__name__)

    def status(self, key=None):
        """One status dict per torrent (all torrents, or only ``key``)."""
        raise EngineError("%s does not implement status" % type(self).__name__)

    def move(self, key, dest_dir, source_dir=None, name=None):
        """Move the torrent's file into ``dest_dir`` (same filesystem: one rename); return when done.

        ``source_dir`` and ``name`` are where the caller added it and the file name of the checked torrent: the
        move is refused when the engine says otherwise (an engine that does not run as root needs them).
        """
        raise EngineError("%s does not implement move" % type(self).__name__)

    def remove(self, key, delete_files=False, save_dir=None, name=None):
        """Stop and forget a torrent; with ``delete_files`` also delete its data.

        ``save_dir`` and ``name`` as for :meth:`move`: with them the removal is refused when the engine says
        otherwise (an engine that does not run as root deletes nothing without them).
        """
        raise EngineError("%s does not implement remove" % type(self).__name__)


def check_location(where, op, key, status, save_dir, name):
    """Refuse ``op`` when the engine's status of ``key`` names another directory or file than the caller expects."""
    if save_dir is None and name is None:
        return
    answered_dir = os.path.normpath(str(status.get("save_dir")))
    if (save_dir is not None and answered_dir != os.path.normpath(save_dir)) or (name is not None and status.get("name") != name):
        raise EngineError("%s: %s %s: the engine says it holds %r in %s, but it was added as %r in %s; refused"
                          % (where, op, key, status.get("name"), answered_dir, name, save_dir))


class LibtorrentEngineClient(Engine):
    """Client of the libtorrent engine service, one connection per request."""

    def __init__(self, socket_path=DEFAULT_SOCKET, timeout=30):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, op, **fields):
        """Send one request and return the response dict; raise EngineError on failure."""
        return call(self.socket_path, op, fields, self.timeout)

    def ping(self):
        """Return the service's ping answer (version information); raise EngineError if unreachable."""
        return self.request("ping")

    def add(self, torrent_data, save_dir, seed_mode=False):
        if not isinstance(torrent_data, (bytes, bytearray)):
            raise EngineError("engine %s: add: torrent data is not bytes" % self.socket_path)
        response = self.request(
            "add",
            torrent=base64.b64encode(bytes(torrent_data)).decode("ascii"),
            save_dir=save_dir,
            seed_mode=bool(seed_mode),
        )
        return response["key"]

    def status(self, key=None):
        fields = {} if key is None else {"key": key}
        response = self.request("status", **fields)
        torrents = response.get("torrents")
        if not isinstance(torrents, list):
            raise EngineError("engine %s: status: malformed response" % self.socket_path)
        return torrents

    def _check(self, op, key, save_dir, name):
        if save_dir is None and name is None:
            return
        found = self.status(key)
        if not found:
            raise EngineError("engine %s: %s: no torrent %s" % (self.socket_path, op, key))
        check_location("engine %s" % self.socket_path, op, key, found[0], save_dir, name)

    def move(self, key, dest_dir, source_dir=None, name=None):
        self._check("move", key, source_dir, name)
        self.request("move", key=key, dest_dir=dest_dir)

    def remove(self, key, delete_files=False, save_dir=None, name=None):
        self._check("remove", key, save_dir, name)
        self.request("remove", key=key, delete_files=bool(delete_files))
