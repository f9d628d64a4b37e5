#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_seed
short_description: Seed published images from the repository host
version_added: 0.1.0
description:
  - Runs on the repository host. Hands each given C(.torrent) to the BitTorrent engine in seed mode,
    with the image file from O(data_dir), so the repository is the swarm's initial seed without
    hashing data the endorser already hashed.
  - Each torrent is parsed with limits; its single file must exist in O(data_dir) with the torrent's size.
  - With O(exclusive=true), torrents the engine seeds that are not in O(torrents) are removed from the
    engine (their data is kept).
author:
  - vmic.fleet contributors (@vmic)
options:
  torrents:
    description: Paths of C(.torrent) files on the repository host.
    type: list
    elements: path
    required: true
  data_dir:
    description: Directory holding the image files named as in the torrents.
    type: path
    required: true
  exclusive:
    description: Stop seeding torrents not listed in O(torrents).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports what would be added and removed.
  diff_mode:
    support: full
    description: Shows the seeded info-hashes before and after.
extends_documentation_fragment:
  - vmic.fleet.engine
  - vmic.fleet.action_group
"""

EXAMPLES = r"""
- name: Seed every published torrent
  vmic.fleet.image_seed:
    torrents: "{{ published_torrents }}"
    data_dir: /srv/vmic/repo/images
    exclusive: true
"""

RETURN = r"""
added:
  description: Keys (v1 info-hashes) handed to the engine.
  returned: always
  type: list
  elements: str
  sample: [3c1f5b0e2a6d4f8e9b7a1c2d3e4f5a6b7c8d9e0f]
removed:
  description: Keys removed from the engine (O(exclusive)).
  returned: always
  type: list
  elements: str
  sample: [a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9]
seeding:
  description: Keys seeded after the run.
  returned: always
  type: list
  elements: str
  sample: [3c1f5b0e2a6d4f8e9b7a1c2d3e4f5a6b7c8d9e0f]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.argspec import engine_argument_spec
from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import fail_missing_dependency
from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import engine_from_spec
from ansible_collections.vmic.fleet.plugins.module_utils.seedplan import plan_seeding


def main():
    module = AnsibleModule(
        argument_spec=dict(
            torrents=dict(type="list", elements="path", required=True),
            data_dir=dict(type="path", required=True),
            exclusive=dict(type="bool", default=False),
            **engine_argument_spec(),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        engine = engine_from_spec(params["engine"])
        plan = plan_seeding(params["torrents"], params["data_dir"], engine, params["exclusive"])
        if not module.check_mode:
            plan.apply(engine)
    except MissingDependencyError as exc:
        fail_missing_dependency(module, exc)
    except VmicError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**plan.result(diff=module._diff))


if __name__ == "__main__":
    main()
