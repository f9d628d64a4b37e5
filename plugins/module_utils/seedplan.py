# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository side of seeding: which published torrents to hand to the engine, and what changes.

Each torrent is read with a size limit and parsed; its single file must exist in the data directory
with the torrent's size. Every problem is a VmicError naming the torrent (and the image file).
"""

from __future__ import annotations

import os

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_input
from ansible_collections.vmic.fleet.plugins.module_utils.errors import TorrentError
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import MAX_TORRENT_BYTES, parse_torrent


def torrents_to_seed(torrent_paths, data_dir):
    """{v1 info-hash: torrent bytes} of the torrents at ``torrent_paths``, each checked against ``data_dir``."""
    wanted = {}
    for path in torrent_paths:
        data = read_input(path, MAX_TORRENT_BYTES, "torrent %s" % path)
        meta = parse_torrent(data, what="torrent %s" % path)
        image = os.path.join(data_dir, meta.name)
        try:
            size = os.path.getsize(image)
        except OSError as exc:
            raise TorrentError("torrent %s: image file %s: %s" % (path, image, exc.strerror or exc))
        if size != meta.size:
            raise TorrentError("torrent %s: image file %s has %d bytes, the torrent says %d" % (path, image, size, meta.size))
        wanted[meta.info_hash_v1] = data
    return wanted


def seed_changes(wanted, current, exclusive):
    """(added, removed, seeding after) as sorted key lists, from the wanted and the currently seeded keys."""
    current = set(current)
    added = sorted(set(wanted) - current)
    removed = sorted(current - set(wanted)) if exclusive else []
    return added, removed, sorted((current | set(added)) - set(removed))
