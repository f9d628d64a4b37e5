# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository side of seeding: which published torrents to hand to the engine, and what changes.

Each torrent is read with a size limit and parsed; its single file must exist in the data directory
with the torrent's size. Every problem is a VmicError naming the torrent (and the image file).
:func:`plan_seeding` decides (it only asks the engine for its status), :meth:`SeedPlan.apply` changes
the engine; the image_seed module is the two with check mode between them.
"""

from __future__ import annotations

import os

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_input
from ansible_collections.vmic.fleet.plugins.module_utils.errors import TorrentError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_TORRENT_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import parse_torrent


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


class SeedPlan(object):
    """What seeding the ``wanted`` torrents changes in an engine that seeds the ``current`` keys.

    ``added``, ``removed`` (with ``exclusive``) and ``seeding`` (after the change) are sorted key lists.
    """

    def __init__(self, wanted, current, data_dir, exclusive=False):
        self.wanted = wanted
        self.current = sorted(set(current))
        self.data_dir = data_dir
        self.added, self.removed, self.seeding = seed_changes(wanted, current, exclusive)

    @property
    def changed(self):
        """Whether the engine is (or would be) changed."""
        return bool(self.added or self.removed)

    def apply(self, engine):
        """Hand the added torrents to ``engine`` in seed mode (data from ``data_dir``); remove the removed keys, keeping their data."""
        for key in self.added:
            engine.add(self.wanted[key], self.data_dir, seed_mode=True)
        for key in self.removed:
            engine.remove(key, delete_files=False)

    def result(self, diff=False):
        """The image_seed module's result: changed, added, removed, seeding, and with ``diff`` the seeded keys before and after."""
        result = dict(changed=self.changed, added=self.added, removed=self.removed, seeding=self.seeding)
        if diff:
            result["diff"] = {"before": "".join("%s\n" % key for key in self.current),
                              "after": "".join("%s\n" % key for key in self.seeding)}
        return result


def plan_seeding(torrent_paths, data_dir, engine, exclusive=False):
    """The :class:`SeedPlan` for the torrents at ``torrent_paths`` (checked against ``data_dir``) and what ``engine`` seeds now."""
    wanted = torrents_to_seed(torrent_paths, data_dir)
    return SeedPlan(wanted, [status["key"] for status in engine.status()], data_dir, exclusive)
