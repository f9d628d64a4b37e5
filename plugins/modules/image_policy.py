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
  - With C(new_images=refuse), an image that was never approved before (per O(state_dir)) is approved
    only by a rule naming its identifier.
  - An image identifier claimed by more than one list is refused everywhere.
  - Expired images (their own C(dc:date:expires) has passed) are never approved.
  - Runs on the controller (C(run_once), C(delegate_to=localhost)) with the profiles of all hosts.
author:
  - vmic.fleet contributors (@vmic)
requirements:
  - the C(jmespath) Python library for C(jmespath) rules
options:
  lists:
    description: Results of M(vmic.fleet.imagelist_verify), one per list.
    type: list
    elements: dict
    required: true
  policy:
    description:
      - The site policy - C(new_images) (V(accept) or V(refuse), default V(accept)) and C(rules), a list
        of mappings with C(action) (V(approve) or V(deny)), an optional C(name), criteria (C(endorser),
        C(identifier), C(vo), C(os), C(osversion), C(arch), C(hypervisor), C(format), C(list),
        C(jmespath)) and, for approve rules, scope (C(clusters), C(subclusters)). A criterion takes a
        string or a list of strings (any of them matches); every criterion of a rule must match.
    type: dict
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
      - Directory where the approved set of the last run is kept (C(approved.json)). It feeds
        C(new_images=refuse) and the diff. Without it, every image counts as new.
    type: path
attributes:
  check_mode:
    support: full
    description: Computes everything; does not write the approved set.
  diff_mode:
    support: full
    description: Shows the approved set (identifier, version, title) before and after.
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
  description: The approved images (signed metadata plus C(vmic:list) and C(vmic:endorser)).
  returned: always
  type: list
  elements: dict
decisions:
  description: One entry per endorsed image - identifier, title, version, list, endorser, approved, reasons, scope.
  returned: always
  type: list
  elements: dict
selected:
  description: Per host, the sorted identifiers of the approved images it selects.
  returned: always
  type: dict
added:
  description: Identifiers approved now but not in the last run.
  returned: always
  type: list
  elements: str
removed:
  description: Identifiers approved in the last run but not now.
  returned: always
  type: list
  elements: str
updated:
  description: Identifiers approved in both runs whose version or checksum changed.
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy, evaluate, select

STATE_FILE = "approved.json"
MAX_STATE_BYTES = 16 * 1024 * 1024


def load_previous(state_dir):
    """The approved set of the last run: identifier -> {version, sha512, title, list}."""
    if not state_dir:
        return {}
    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(path):
        return {}
    try:
        data = json.loads(read_limited(path, MAX_STATE_BYTES).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise VmicError("approved-set state %s is unreadable: %s" % (path, exc))
    if not isinstance(data, dict) or not isinstance(data.get("approved"), dict):
        raise VmicError("approved-set state %s lacks an approved mapping" % path)
    return data["approved"]


def summary(approved):
    """One line per approved image, sorted, for the diff."""
    return "".join("%s %s %s\n" % (key, value.get("version"), value.get("title")) for key, value in sorted(approved.items()))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            lists=dict(type="list", elements="dict", required=True),
            policy=dict(type="dict", required=True),
            hosts=dict(type="dict", default={}),
            state_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        policy = Policy(params["policy"])
        previous = load_previous(params["state_dir"])
        decisions = evaluate(policy, params["lists"], known=previous.keys())
        selected = select(decisions, params["hosts"])
    except VmicError as exc:
        module.fail_json(msg=str(exc))

    approved_images, current = [], {}
    for decision in decisions:
        if not decision.approved:
            continue
        image = dict(decision.candidate.image)
        image["vmic:list"] = decision.candidate.list_identifier
        image["vmic:endorser"] = decision.candidate.endorser
        image["vmic:scope"] = decision.to_dict()["scope"]
        approved_images.append(image)
        current[decision.candidate.identifier] = {
            "version": image.get("hv:version"),
            "sha512": image.get("sl:checksum:sha512"),
            "title": image.get("dc:title"),
            "list": decision.candidate.list_identifier,
        }
    added = sorted(set(current) - set(previous))
    removed = sorted(set(previous) - set(current))
    updated = sorted(key for key in set(current) & set(previous)
                     if (current[key]["version"], current[key]["sha512"]) != (previous[key].get("version"), previous[key].get("sha512")))
    changed = bool(added or removed or updated)
    if changed and params["state_dir"] and not module.check_mode:
        try:
            if not os.path.isdir(params["state_dir"]):
                os.makedirs(params["state_dir"], mode=0o750)
            write_atomic(os.path.join(params["state_dir"], STATE_FILE),
                         (json.dumps({"approved": current}, sort_keys=True, indent=2) + "\n").encode("utf-8"), 0o640)
        except OSError as exc:
            module.fail_json(msg="approved-set state %s: %s" % (params["state_dir"], exc))
    result = dict(
        changed=changed,
        approved=approved_images,
        decisions=[decision.to_dict() for decision in decisions],
        selected=selected,
        added=added,
        removed=removed,
        updated=updated,
    )
    if module._diff:
        result["diff"] = {"before_header": "approved images", "after_header": "approved images",
                          "before": summary(previous), "after": summary(current)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
