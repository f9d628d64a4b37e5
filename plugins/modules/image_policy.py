#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_policy
short_description: Apply the site approval policy to verified image lists and select images per host
version_added: 0.1.0
description:
  - Takes the results of M(vmic.fleet.imagelist_verify) (only lists with C(valid=true) count - an image
    is endorsed only through a verified list), applies the site policy from inventory vars, and returns
    the approved images and, per host, the approved images that host selects.
  - Rules approve everything from an endorser, or images matched by identifier, VO, OS, OS version,
    arch, hypervisor, format, list UUID, or a JMESPath expression over the image metadata. Deny rules
    win over approve rules. Approve rules may be scoped to clusters and subclusters.
  - An image is (endorser, identifier). A rule naming an C(identifier) must name the C(endorser) too.
  - With C(new_images=refuse), an image that was never approved before is approved only by a rule
    naming its identifier. "Approved before" means in the approved set of O(state_dir) (or
    O(known_images)); rollout.yml and status.yml pass the same set to every hypervisor.
  - An identifier listed twice by one endorser is refused. The same identifier approved from two
    endorsers is kept for the one approved before and refused for the other (for all of them when
    none was approved before); a denied image never affects another endorser's images.
  - Expired images (their own C(dc:date:expires) has passed) are never approved.
  - Runs on the controller (C(run_once), C(delegate_to=localhost)) with the profiles of all hosts.
author:
  - vmic.fleet contributors (@vmic)
requirements:
  - the C(jmespath) Python library for C(jmespath) rules
options:
  lists:
    description:
      - Results of M(vmic.fleet.imagelist_verify), one per list (registered results as they are, for example
        the C(results) of a loop). Only C(valid), C(endorser), C(metadata), C(images) and C(expired_images) are read.
    type: list
    elements: dict
    required: true
  hosts:
    description:
      - Host profiles by inventory hostname, each with C(cluster), C(subcluster), C(hypervisor) and
        C(arch) (all optional). A host selects an approved image when the image's scope admits its
        cluster and subcluster, and the image's C(hv:hypervisor) and C(sl:arch) (when set) fit the host.
    type: dict
    default: {}
  state_dir:
    description:
      - Directory where the approved set of the last run is kept (C(approved.json), keyed by
        C(endorser/identifier)). It feeds C(new_images=refuse) and the diff. Without it (and without
        O(known_images)), every image counts as new.
    type: path
  known_images:
    description:
      - Identities (C(endorser/identifier)) approved before, in addition to those of O(state_dir).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Computes everything; does not write the approved set.
  diff_mode:
    support: full
    description: Shows the approved set (identifier, version, title) before and after.
extends_documentation_fragment:
  - vmic.fleet.policy
  - vmic.fleet.action_group
"""

EXAMPLES = r"""
- name: Approve and select
  vmic.fleet.image_policy:
    lists: "{{ verified.results }}"
    policy: "{{ vmic_policy }}"
    hosts: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, 'vmic_profile'))) }}"
    state_dir: /var/lib/vmic/policy
  run_once: true
  delegate_to: localhost
  register: approval

- name: Show what this host selects
  ansible.builtin.debug:
    var: approval.selected[inventory_hostname]
"""

RETURN = r"""
approved:
  description:
    - The approved images - the signed image metadata (every field, as in RV(vmic.fleet.imagelist_verify#module:images)) plus
      C(vmic:list) (the list UUID), C(vmic:endorser) (the endorser's name) and C(vmic:scope) (as in RV(decisions[].scope)).
  returned: always
  type: list
  elements: dict
  sample:
    - dc:identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      dc:title: Debian 12
      hv:version: "3"
      sl:os: Linux
      vmic:list: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
      vmic:endorser: example-it
      vmic:scope:
        clusters: [prod]
decisions:
  description: One entry per endorsed image of the valid lists, approved or not, with the reasons.
  returned: always
  type: list
  elements: dict
  contains:
    identifier:
      description: The image UUID (lower case).
      type: str
    title:
      description: The image's C(dc:title).
      type: str
    version:
      description: The image's C(hv:version).
      type: str
    list:
      description: UUID of the list the image is in.
      type: str
    endorser:
      description: Name of the endorser that signed that list.
      type: str
    approved:
      description: Whether the policy approves the image.
      type: bool
    reasons:
      description:
        - Why the image is approved or not - the rules that approve or deny it, V(no approve rule matches),
          a new image under O(policy.new_images=refuse), an expired image, an identifier conflict.
      type: list
      elements: str
    scope:
      description:
        - Where an approved image is selected - C(clusters) and C(subclusters), each a sorted list, present when
          every approve rule that matches narrows it; absent keys mean everywhere.
      type: dict
  sample:
    - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      title: Debian 12
      version: "3"
      list: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
      endorser: example-it
      approved: true
      reasons: [approved by approve rule base-images]
      scope:
        clusters: [prod]
    - identifier: 0a1b2c3d-1111-4222-8333-444455556666
      title: Windows test image
      version: "7"
      list: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
      endorser: example-it
      approved: false
      reasons: [denied by deny rule no-windows]
      scope: {}
selected:
  description: Per host of O(hosts), the sorted identifiers of the approved images it selects.
  returned: always
  type: dict
  sample:
    hv01.example.org: [6f1e2d3c-4b5a-4968-8776-655443322110]
    hv02.example.org: []
added:
  description: Identities (C(endorser/identifier)) approved now but not in the last run.
  returned: always
  type: list
  elements: str
  sample: [example-it/6f1e2d3c-4b5a-4968-8776-655443322110]
removed:
  description: Identities approved in the last run but not now.
  returned: always
  type: list
  elements: str
  sample: []
updated:
  description: Identities approved in both runs whose version or checksum changed.
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.approvedset import ApprovedSetStore, approve, check_known
from ansible_collections.vmic.fleet.plugins.module_utils.argspec import policy_argument_spec
from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import fail_missing_dependency
from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.listverify import from_results
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy, select


def main():
    module = AnsibleModule(
        argument_spec=dict(
            lists=dict(type="list", elements="dict", required=True),
            **policy_argument_spec(),
            hosts=dict(type="dict", default={}),
            state_dir=dict(type="path"),
            known_images=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        store = ApprovedSetStore(params["state_dir"])
        approval = approve(Policy(params["policy"]), from_results(params["lists"]), store, known=check_known(params["known_images"]))
        selected = select(approval.decisions, params["hosts"])
        if approval.changed and params["state_dir"] and not module.check_mode:
            store.save(approval.current)
    except MissingDependencyError as exc:
        fail_missing_dependency(module, exc)
    except VmicError as exc:
        module.fail_json(msg=str(exc))
    result = dict(
        changed=approval.changed,
        approved=approval.approved_images(),
        decisions=[decision.to_dict() for decision in approval.decisions],
        selected=selected,
        added=approval.added,
        removed=approval.removed,
        updated=approval.updated,
    )
    if module._diff:
        result["diff"] = approval.diff()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
