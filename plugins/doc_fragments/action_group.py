# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """Membership of the modules in the action group ``fleet`` (meta/runtime.yml)."""

    DOCUMENTATION = r"""
attributes:
  action_group:
    description: Use C(group/vmic.fleet.fleet) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - vmic.fleet.fleet
"""
