# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """The ``engine`` option of every module that talks to the BitTorrent engine (argument spec: module_utils/argspec.py)."""

    DOCUMENTATION = r"""
options:
  engine:
    description:
      - The BitTorrent engine on this host and how to reach it.
      - Set it once for every module of the collection with C(module_defaults) and the group
        C(group/vmic.fleet.fleet) (see the examples of M(vmic.fleet.image_sync)).
    type: dict
    suboptions:
      kind:
        description:
          - V(libtorrent) is the collection's engine service (role C(vmic.fleet.engine)), V(rtorrent) an rtorrent
            reached over its SCGI socket (role C(vmic.fleet.rtorrent)).
        type: str
        choices: [libtorrent, rtorrent]
        default: libtorrent
      socket:
        description:
          - The engine's control socket (a unix socket).
          - Default - C(/run/vmic-engine/engine.sock) for V(libtorrent), C(/run/rtorrent/rpc.sock) for V(rtorrent).
        type: path
      user:
        description:
          - The user the engine runs as, when it does not run as root; required for V(rtorrent) by
            M(vmic.fleet.image_sync).
          - Only an image's download directory is handed to that user. Root takes the finished file from it,
            hashes it again and commits it root's and read-only; the engine seeds it from there.
          - Used by M(vmic.fleet.image_sync) only.
        type: str
      timeout:
        description: Seconds one request to the engine may take in all.
        type: int
        default: 30
"""
