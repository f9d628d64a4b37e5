# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """The site approval policy (argument spec: module_utils/argspec.py)."""

    DOCUMENTATION = r"""
options:
  policy:
    description:
      - The site approval policy, usually the inventory variable C(vmic_policy). Deny rules win over approve rules.
    type: dict
    required: true
    suboptions:
      new_images:
        description:
          - With V(refuse), an image that was never approved before is approved only by a rule naming its
            identifier (and endorser). With V(accept), any approve rule that matches approves it.
        type: str
        choices: [accept, refuse]
        default: accept
      rules:
        description:
          - The rules, in order. Each is a mapping with C(action) (V(approve) or V(deny)), an optional C(name)
            (shown in decisions and errors), criteria - C(endorser), C(identifier), C(vo), C(os), C(osversion),
            C(arch), C(hypervisor), C(format), C(list) (the list UUID), C(jmespath) (an expression over the
            signed image metadata; quote field names, C("sl:os")) - and, for approve rules only, the scope
            C(clusters) and C(subclusters).
          - A criterion takes a string or a list of strings (any of them matches); every criterion of a rule
            must match, and a rule needs at least one. A rule naming an C(identifier) must name the C(endorser) too.
          - The keys of a rule are checked when the policy is read (an unknown key, a missing C(action) or
            criterion is an error naming the rule), not by the argument spec.
        type: list
        elements: dict
        default: []
"""
