#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_info
short_description: What a hypervisor holds and what its BitTorrent engine is doing
version_added: 0.1.0
description:
  - Lists the verified images in the image store (see M(vmic.fleet.image_sync) for the layout), the
    progress of the last or current M(vmic.fleet.image_sync) run, and the engine's torrents (state,
    progress, peers, bytes from peers, web seed and seeds, upload).
  - An engine that cannot be reached is reported in C(engine_error), not as a failure.
  - With O(verify=true) it reads every stored image again and checks its size and sha512 against the
    metadata written when it was verified and committed; a mismatch fails the task and is listed in C(corrupt).
author:
  - vmic.fleet contributors (@vmic)
options:
  store_dir:
    description: The image store.
    type: path
    default: /var/lib/vmic/images
  engine:
    description: The engine to ask - C(kind) and C(socket), as for M(vmic.fleet.image_sync). An empty mapping (V({})) skips it.
    type: dict
    default: {kind: libtorrent, socket: /run/vmic-engine/engine.sock}
  verify:
    description:
      - Hash every stored image again (size and sha512 against its metadata). Reads every byte of the store.
      - Any mismatch (a changed, truncated or missing file) fails the task; C(corrupt) names each one.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Nothing to show.
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
  description: Verified images in the store - identifier, version, path, size, sha512, list, title, verified_at.
  returned: always
  type: list
  elements: dict
progress:
  description: Progress file of the current or last transfer (images, progress, state, elapsed), if any.
  returned: always
  type: dict
torrents:
  description: The engine's status of each torrent.
  returned: always
  type: list
  elements: dict
engine_error:
  description: Why the engine could not be asked, if it could not.
  returned: always
  type: str
corrupt:
  description: With O(verify=true), the stored images whose file no longer matches their metadata - identifier, version, path, reason.
  returned: always
  type: list
  elements: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import PARTIAL, ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import PROGRESS_FILE, engine_from_spec


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store_dir=dict(type="path", default="/var/lib/vmic/images"),
            engine=dict(type="dict", default={"kind": "libtorrent", "socket": "/run/vmic-engine/engine.sock"}),
            verify=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    result = dict(changed=False, images=[], progress={}, torrents=[], engine_error=None, corrupt=[])
    try:
        store = ImageStore(params["store_dir"])
        result["images"] = [image.to_dict() for image in store.images()]
        if params["verify"]:
            result["corrupt"] = store.verify_all()
        progress_path = os.path.join(params["store_dir"], PARTIAL, PROGRESS_FILE)
        if os.path.exists(progress_path):
            result["progress"] = json.loads(read_limited(progress_path, 4 * 1024 * 1024).decode("utf-8"))
    except (VmicError, ValueError, UnicodeDecodeError) as exc:
        module.fail_json(msg="image store %s: %s" % (params["store_dir"], exc))
    if params["engine"]:
        try:
            result["torrents"] = engine_from_spec(params["engine"]).status()
        except VmicError as exc:
            result["engine_error"] = str(exc)
    if result["corrupt"]:
        module.fail_json(msg="image store %s: %d stored image(s) no longer match their metadata: %s"
                         % (params["store_dir"], len(result["corrupt"]), "; ".join(item["reason"] for item in result["corrupt"])), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
