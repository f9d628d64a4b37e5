#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_wait
short_description: Follow a fleet's downloads on the controller, one round at a time, and print its progress
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin; run it with C(run_once)). C(rollout.yml) starts every hypervisor's downloads at once
    (M(vmic.fleet.image_sync) with O(vmic.fleet.image_sync#module:phase=download) and O(vmic.fleet.image_sync#module:wait=false),
    so that each engine downloads on its own), then repeats a round until no host is pending - this action, then
    M(vmic.fleet.image_info) on the pending hosts only (one module run per pending host), then a failure for each host this
    action found failed.
  - Each round it judges every host of the play from its start result (O(start_var)) and its last read (O(read_var)) - done
    when the engine holds every byte of each download it was given, failed when the engine reports an error or lost a
    torrent, when the host became unreachable or failed, or when O(timeout) passed - and prints one line of fleet
    progress (hosts done, failed and downloading of all, bytes done of all) and the slowest hosts.
  - Then it sleeps until the next read is worth its cost - O(interval) seconds, shorter when the pending hosts' download rates
    say they finish sooner - printing a line at least every 30 seconds. The first round (no O(previous)) does not sleep - the
    start step's pass over the fleet was the first wait.
  - It reads and changes nothing on the hosts - verification and commit are the activation's
    (O(vmic.fleet.image_sync#module:phase=activate) checks every byte before anything enters a store).
author:
  - vmic.fleet contributors (@vmic)
options:
  previous:
    description: The result of the previous round (register it and pass it back); empty for the first round.
    type: dict
    default: {}
  timeout:
    description: Seconds from the first round after which every host still downloading is failed (its engine goes on; a re-run resumes).
    type: float
    default: 3600
  interval:
    description:
      - Seconds between two rounds. Each round costs one module run (one SSH round trip) per pending host.
      - Default (V(0)) - 5 s up to 50 hosts, then 0.1 s per host, at most 30 s.
    type: float
    default: 0
  hosts:
    description:
      - The hosts to judge (default - those of O(previous), else C(ansible_play_hosts_all)). A host not in C(ansible_play_hosts) that is
        not done yet is failed or unreachable; a later round may run in a play of the pending hosts only.
    type: list
    elements: str
  start_var:
    description: The variable each host registered the start (M(vmic.fleet.image_sync) O(vmic.fleet.image_sync#module:wait=false)) in.
    type: str
    default: vmic_download
  read_var:
    description: The variable each pending host registered its last read (M(vmic.fleet.image_info)) in.
    type: str
    default: vmic_download_read
  sleep:
    description: Sleep until the next round when a host is pending (V(false) - judge and print only).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Reads registered results only.
  diff_mode:
    support: none
    description: Nothing to show.
  action:
    support: full
    description: Runs on the controller.
seealso:
  - module: vmic.fleet.image_sync
  - module: vmic.fleet.image_info
"""

EXAMPLES = r"""
# playbooks/tasks/download_wait.yml, included by rollout.yml as long as a host is pending
- name: Read the downloads of the hosts still downloading
  vmic.fleet.image_info:
  when: inventory_hostname in vmic_download_wait.pending
  register: vmic_download_read

- name: Fleet download progress
  vmic.fleet.fleet_wait:
    previous: "{{ vmic_download_wait }}"
    timeout: 3600
  run_once: true
  register: vmic_download_wait
"""

RETURN = r"""
round:
  description: The number of this round (0 - judged from the start results alone).
  returned: always
  type: int
pending:
  description: Hosts still downloading (to read in the next round).
  returned: always
  type: list
  elements: str
done:
  description: Hosts whose engine holds every byte of their downloads (or that had nothing to download).
  returned: always
  type: list
  elements: str
all_hosts:
  description: The hosts judged (the next round judges the same ones).
  returned: always
  type: list
  elements: str
failed_hosts:
  description: Hosts that failed, with the reason (engine error, torrent lost, unreachable, not complete by the deadline).
  returned: always
  type: dict
finished:
  description: Whether no host is pending.
  returned: always
  type: bool
bytes_done:
  description: Bytes the engines hold of all downloads.
  returned: always
  type: int
bytes_total:
  description: Bytes of all downloads.
  returned: always
  type: int
slowest:
  description: The pending hosts least far along (host, done, size, rate, reason).
  returned: always
  type: list
  elements: dict
msg:
  description: The lines printed.
  returned: always
  type: list
  elements: str
"""
