#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_info
short_description: Report the images a hypervisor holds and what its BitTorrent engine does
version_added: 0.1.0
description:
  - Lists the verified images in the image store (see M(vmic.fleet.image_sync) for the layout), the
    progress of the last or current M(vmic.fleet.image_sync) run, and the engine's torrents (state,
    progress, peers, bytes from peers, web seed and seeds, upload).
  - The engine (O(engine)) is asked for the status of its torrents; an engine that cannot be reached is reported
    in RV(engine_error), not as a failure.
  - With O(verify=true) it reads every stored image again and checks its size and sha512 against the
    metadata written when it was verified and committed; a mismatch fails the task and is listed in RV(corrupt).
author:
  - vmic.fleet contributors (@vmic)
options:
  store_dir:
    description: The image store.
    type: path
    default: /var/lib/vmic/images
  verify:
    description:
      - Hash every stored image again (size and sha512 against its metadata). Reads every byte of the store.
      - Any mismatch (a changed, truncated or missing file) fails the task; RV(corrupt) names each one.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Nothing to show.
extends_documentation_fragment:
  - vmic.fleet.engine
  - vmic.fleet.action_group
"""

EXAMPLES = r"""
- name: What does this hypervisor hold?
  vmic.fleet.image_info:
  register: held

- name: Show it
  ansible.builtin.debug:
    msg: "{{ held.images | map(attribute='identifier') | list }}"

- name: Check every stored image byte for byte
  vmic.fleet.image_info:
    verify: true
"""

RETURN = r"""
images:
  description: The verified images in the store, sorted by identifier and version.
  returned: always
  type: list
  elements: dict
  contains:
    identifier:
      description: The image UUID.
      type: str
    version:
      description: The image's C(hv:version).
      type: str
    path:
      description: The image file.
      type: str
    size:
      description: Size in bytes, as signed (C(hv:size)).
      type: int
    sha512:
      description: sha512 of the file, as signed (C(sl:checksum:sha512)).
      type: str
    list:
      description: UUID of the list the image came from.
      type: str
    title:
      description: The image's C(dc:title).
      type: str
    verified_at:
      description: When the file was verified and committed (UTC).
      type: str
    btih_v1:
      description: The v1 info-hash of the image's torrent (the engine's key for it).
      type: str
  sample:
    - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      version: "3"
      path: /var/lib/vmic/images/6f1e2d3c-4b5a-4968-8776-655443322110/3/debian12.qcow2
      size: 2147483648
      sha512: 9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043
      list: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
      title: Debian 12
      verified_at: "2025-03-04T10:15:02Z"
      btih_v1: 3c1f5b0e2a6d4f8e9b7a1c2d3e4f5a6b7c8d9e0f
progress:
  description: Progress file of the current or last M(vmic.fleet.image_sync) transfer (empty when there is none).
  returned: always
  type: dict
  contains:
    updated_at:
      description: When the file was last written (UTC).
      type: str
    elapsed:
      description: Seconds since the transfer started.
      type: float
    images:
      description: One entry per image of the transfer - identifier, version, progress (0 to 1), state, total_done (bytes), size.
      type: list
      elements: dict
  sample:
    updated_at: "2025-03-04T10:14:20Z"
    elapsed: 12.5
    images:
      - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
        version: "3"
        progress: 0.42
        state: downloading
        total_done: 901775360
        size: 2147483648
torrents:
  description: The engine's status of each torrent (empty when the engine could not be asked).
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The engine's key for the torrent (its v1 info-hash).
      type: str
    info_hash_v1:
      description: v1 info-hash (hex).
      type: str
    info_hash_v2:
      description: v2 info-hash (hex), for a hybrid torrent.
      type: str
    name:
      description: The torrent's file name.
      type: str
    save_dir:
      description: The directory the engine saves (or seeds) the file in.
      type: str
    state:
      description: V(checking), V(downloading), V(seeding), V(paused) or V(error).
      type: str
    progress:
      description: Fraction downloaded and verified, 0 to 1.
      type: float
    total_size:
      description: Size of the file in bytes.
      type: int
    total_done:
      description: Bytes downloaded and verified.
      type: int
    bytes_from_peers:
      description: Bytes received from other peers.
      type: int
    bytes_from_web_seed:
      description: Bytes received from the web seed (always 0 for rtorrent).
      type: int
    bytes_from_seeds:
      description: Bytes received from peers that had the whole file.
      type: int
    upload_total:
      description: Bytes sent to other peers.
      type: int
    num_peers:
      description: Peers connected now.
      type: int
    num_seeds:
      description: Connected peers that have the whole file.
      type: int
    download_rate:
      description: Download rate now, bytes per second.
      type: int
    upload_rate:
      description: Upload rate now, bytes per second.
      type: int
    hashfail_count:
      description: Pieces that failed their hash check (always 0 for rtorrent).
      type: int
    banned_peers:
      description: Peers banned for sending bad data (always 0 for rtorrent).
      type: int
    error:
      description: The engine's error for this torrent, or V(null).
      type: str
    added_at:
      description: When the torrent was added (seconds since the epoch), or V(null).
      type: float
    completed_at:
      description: When the download completed (seconds since the epoch), or V(null).
      type: float
  sample:
    - key: 3c1f5b0e2a6d4f8e9b7a1c2d3e4f5a6b7c8d9e0f
      info_hash_v1: 3c1f5b0e2a6d4f8e9b7a1c2d3e4f5a6b7c8d9e0f
      info_hash_v2: 8d2e6f0a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e
      name: debian12.qcow2
      save_dir: /var/lib/vmic/images/6f1e2d3c-4b5a-4968-8776-655443322110/3
      state: seeding
      progress: 1.0
      total_size: 2147483648
      total_done: 2147483648
      bytes_from_peers: 1610612736
      bytes_from_web_seed: 4194304
      bytes_from_seeds: 536870912
      upload_total: 3221225472
      num_peers: 5
      num_seeds: 2
      download_rate: 0
      upload_rate: 1048576
      hashfail_count: 0
      banned_peers: 0
      error: null
      added_at: 1741083220.4
      completed_at: 1741083262.1
engine_error:
  description: Why the engine could not be asked, if it could not (V(null) otherwise).
  returned: always
  type: str
  sample: "engine /run/vmic-engine/engine.sock: status failed: No such file or directory"
corrupt:
  description:
    - With O(verify=true), the stored images whose file no longer matches their metadata (empty otherwise).
    - Each names the image as RV(images) does (C(identifier), C(version), C(path)) and gives the C(reason) - a
      missing file, its size or its sha512.
  returned: always
  type: list
  elements: dict
  sample:
    - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      version: "3"
      path: /var/lib/vmic/images/6f1e2d3c-4b5a-4968-8776-655443322110/3/debian12.qcow2
      reason: >-
        image 6f1e2d3c-4b5a-4968-8776-655443322110 3: sha512 of
        /var/lib/vmic/images/6f1e2d3c-4b5a-4968-8776-655443322110/3/debian12.qcow2 does not match the signed list
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.argspec import engine_argument_spec
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore, store_info
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import engine_from_spec


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store_dir=dict(type="path", default="/var/lib/vmic/images"),
            **engine_argument_spec(),
            verify=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    store_dir = module.params["store_dir"]
    try:
        info = store_info(ImageStore(store_dir), engine_from_spec(module.params["engine"]), verify=module.params["verify"])
    except VmicError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="image store %s: %s" % (store_dir, exc.strerror or exc))
    if info["corrupt"]:
        module.fail_json(msg="image store %s: %d stored image(s) no longer match their metadata: %s"
                         % (store_dir, len(info["corrupt"]), "; ".join(item["reason"] for item in info["corrupt"])), **info)
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
