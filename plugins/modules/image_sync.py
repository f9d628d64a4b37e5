#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_sync
short_description: Converge a hypervisor to its approved, selected set of verified images
version_added: 0.1.0
description:
  - Runs on a hypervisor, in one call - verifies the subscribed image lists (as M(vmic.fleet.imagelist_verify)),
    applies the site policy and this host's profile (as M(vmic.fleet.image_policy)), then for every
    image to add fetches its C(.torrent), checks its sha256 against the signed list and the torrent
    against the list (one file, safe name, size, v1 and v2 info-hashes), hands it to the BitTorrent engine,
    waits with a deadline while writing progress, checks size and sha512 of every byte, and moves the
    images atomically into the store. Then it retires images no longer approved or selected (archive or
    delete), never one that a process holds open.
  - Any failure before the commit step leaves the store exactly as it was; verified partial data stays
    in the store's C(.partial) area so the next run resumes.
  - Each subscribed list is judged on its own. A refused list (bad signature, expired, rollback, stale
    CRL, unreachable, ...) keeps the images it covers exactly as they are and blocks nothing else - the
    other lists are still applied (withdrawals included). The module does not fail for it; it names the
    list in RV(refused_lists) and warns, and C(status.yml) fails on it. A list whose signer the site's
    CRLs revoke is a definite signal - its images are retired (withdrawn).
  - An image is (endorser, identifier); a list never affects another endorser's images.
  - With O(phase=download) and O(wait=false) it returns as soon as the engine has the checked torrents; the engine
    downloads on its own, so every host downloads at once whatever Ansible's C(forks); C(rollout.yml) then follows the
    fleet's progress with M(vmic.fleet.image_info) rounds (action C(vmic.fleet.fleet_wait)). It also suits C(async)/C(poll).
  - Store layout - C(<store_dir>/<identifier>/<version>/<file>), metadata in
    C(<store_dir>/<identifier>/<version>.json), C(<store_dir>/<identifier>/current) symlink, downloads
    in C(<store_dir>/.partial/).
author:
  - vmic.fleet contributors (@vmic)
requirements:
  - the C(openssl) command and the C(cryptography) Python library (list verification)
  - the libtorrent Python bindings (torrent checks) and a running engine service (M(vmic.fleet.image_info) shows it)
options:
  lists:
    description: Subscribed image lists.
    type: list
    elements: dict
    required: true
    suboptions:
      src:
        description: Path or URL of the signed list.
        type: str
        required: true
      endorser:
        description:
          - Name of the endorser (in O(endorsers)) this list is subscribed from. A list signed by anyone
            else is refused, whatever it says about itself.
        type: str
        required: true
      identifier:
        description: The list UUID of this subscription; a list with another C(dc:identifier) is refused.
        type: str
        required: true
        aliases: [expected_identifier]
  known_images:
    description:
      - Identities (C(endorser/identifier)) the site approved before - the keys of the approved set that
        C(publish.yml) records (C(approved.json)). They decide C(new_images=refuse) exactly as on the
        controller, on an old host as on a fresh one.
    type: list
    elements: str
    default: []
  profile:
    description:
      - This host's profile, usually the inventory variable C(vmic_profile). An approved image is selected when
        its scope admits the host's cluster and subcluster and its C(hv:hypervisor) and C(sl:arch) (when set)
        fit the host.
    type: dict
    suboptions:
      cluster:
        description: The host's cluster (compared without case with the C(clusters) scope of approve rules).
        type: str
      subcluster:
        description: The host's subcluster (compared with the C(subclusters) scope of approve rules).
        type: str
      hypervisor:
        description: The host's hypervisor type, for example V(kvm) (compared with an image's C(hv:hypervisor)).
        type: str
      arch:
        description: The host's architecture, for example V(x86_64) (V(amd64) and V(arm64) are read as V(x86_64), V(aarch64)).
        type: str
  store_dir:
    description: The image store.
    type: path
    default: /var/lib/vmic/images
  state_dir:
    description: Where accepted list versions are kept (rollback protection).
    type: path
    default: /var/lib/vmic/lists
  retire:
    description: What to do with images no longer approved or selected.
    type: str
    choices: [archive, delete]
    default: archive
  archive_dir:
    description: Where retired images go with O(retire=archive).
    type: path
    default: /var/lib/vmic/archive
  phase:
    description:
      - V(all) downloads, verifies, commits and retires in one run.
      - V(download) only downloads and verifies into the partial area (the engine seeds it meanwhile);
        the store is not changed. A rollout runs it on every host at once. When the host has something to activate,
        it keeps the exact signed bytes of every list it accepted and every torrent it checked in O(state_dir)
        (C(.kept/), root's, 0700 directories and 0600 files, written atomically, within the limits of a list and
        a torrent); otherwise, and for a refused list, it forgets what an earlier download kept.
      - V(activate) commits what is downloaded (verifying it again) and retires; a rollout runs it in
        batches with a canary. Anything not yet downloaded is downloaded first. A list or torrent the download
        phase kept is used instead of fetching it, verified again offline with every check (signature, pinned CA,
        the site's CRLs, expiry, the rollback floor of the state, the subscription; torrents against the signed list),
        so that the activation needs neither the repository nor the torrents' server once every piece is in the swarm.
        A kept list below the version the state accepted since (or other bytes at that version) is superseded - it is
        forgotten and the list is fetched (a warning says so). Any other refusal of a kept copy (tampered, signed by
        another endorser, another list, too large, not root's and private, expired) refuses that list in this run -
        its images stay as they are, it is not fetched, RV(lists[].reasons) names the kept file; the next download
        phase replaces the copy. Without a kept copy (an activation without a download) the list is fetched.
      - After a run that commits (V(activate) or V(all)) and succeeds, the kept copies of the lists it applied and
        every kept torrent are removed; a failed activation leaves them for the next attempt.
    type: str
    choices: [all, download, activate]
    default: all
  timeout:
    description: Seconds to wait for all downloads before giving up (nothing is committed then).
    type: int
    default: 3600
  wait:
    description:
      - With V(false) (only with O(phase=download)) the module hands the checked torrents to the engine and returns at once,
        without waiting for the downloads or verifying them (the activation verifies every byte before it commits).
        RV(images) then gives each download's C(key), C(size) and C(total_done) so that a waiter can follow it in the
        engine (M(vmic.fleet.image_info) RV(vmic.fleet.image_info#module:torrents)).
    type: bool
    default: true
  linger:
    description:
      - With O(wait=false), the module looks at the engine again for at most this many seconds while a download is not
        finished, then returns. A download that finishes meanwhile is reported V(downloaded), so the rollout need not
        read that host again (M(vmic.fleet.fleet_wait) counts it done from this result); each host holds its fork that
        much longer at most. V(0) returns after one look.
    type: float
    default: 0
  https_ca_file:
    description: CA bundle to check HTTPS servers with.
    type: path
  allow_http:
    description:
      - Allow plain C(http://) list and C(.torrent) URLs (and redirects to them). The signature and the
        signed sha256 still protect the content, but not its freshness.
    type: bool
    default: false
  allow_legacy_digests:
    description: Accept SHA-1 list signatures.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Verifies the lists and reports the exact plan (add, keep, retire) without downloading or writing.
  diff_mode:
    support: full
    description: Shows the images held (identifier and version) before and after.
extends_documentation_fragment:
  - vmic.fleet.trust
  - vmic.fleet.policy
  - vmic.fleet.engine
  - vmic.fleet.action_group
"""

EXAMPLES = r"""
- name: Converge this hypervisor
  vmic.fleet.image_sync:
    lists:
      - src: https://repo.example.org/lists/base.list
        endorser: example-it
        identifier: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
    ca_path: /etc/grid-security/certificates
    endorsers: "{{ vmic_endorsers }}"
    policy: "{{ vmic_policy }}"
    profile: "{{ vmic_profile }}"
  async: 3600
  poll: 10

# Options that every module of the collection shares, set once for a block (or a play) with the action group.
- name: A hypervisor with rtorrent
  module_defaults:
    group/vmic.fleet.fleet:
      engine:
        kind: rtorrent
        socket: /run/rtorrent/rpc.sock
        user: rtorrent
  block:
    - name: Report the plan without changing anything
      vmic.fleet.image_sync:
        lists: "{{ vmic_lists }}"
        ca_path: /etc/grid-security/certificates
        endorsers:
          - name: example-it
            dn: /DC=org/DC=example/O=Example/CN=Image Endorser
            ca: /DC=org/DC=example/CN=Example CA
            ca_fingerprint: 5f0c3a7e1d9b24c68a3e0f7b12d4c9e6a8b0f1e3d5c7a9b2e4f6a8c0d2e4f6a8
            urls: [https://repo.example.org/lists/base.list]
        policy:
          new_images: refuse
          rules:
            - name: base-images
              action: approve
              endorser: example-it
              os: Linux
              clusters: [prod]
        profile:
          cluster: prod
          hypervisor: kvm
          arch: x86_64
      check_mode: true
      register: plan

    - name: What the engine is doing
      vmic.fleet.image_info:
"""

RETURN = r"""
plan:
  description:
    - What the run does (in check mode - would do). Images are named C(<identifier> <version>).
  returned: always
  type: dict
  contains:
    add:
      description: Images to download, verify and commit.
      type: list
      elements: str
      sample: [6f1e2d3c-4b5a-4968-8776-655443322110 3]
    keep:
      description: Held images that stay as they are.
      type: list
      elements: str
      sample: [0a1b2c3d-1111-4222-8333-444455556666 12]
    retire:
      description: Held images no longer approved or selected (or whose endorser is revoked), to archive or delete.
      type: list
      elements: str
      sample: [6f1e2d3c-4b5a-4968-8776-655443322110 2]
    held:
      description: Held images kept exactly as they are because their list was refused this run.
      type: list
      elements: str
      sample: []
    refused:
      description: The subscriptions whose list was refused this run (the same entries as RV(refused_lists)).
      type: list
      elements: dict
      sample: []
    conflicts:
      description:
        - Images not added this run, with the reason - another endorser's held image has the same identifier,
          or the store's place for the image is taken by a held image retired in this run (added next run).
      type: list
      elements: str
      sample: []
    discard:
      description: Downloads that no image to add uses any more (withdrawn before activation), dropped at activation.
      type: list
      elements: str
      sample: []
  sample:
    add: [6f1e2d3c-4b5a-4968-8776-655443322110 3]
    keep: [0a1b2c3d-1111-4222-8333-444455556666 12]
    retire: [6f1e2d3c-4b5a-4968-8776-655443322110 2]
    held: []
    refused: []
    conflicts: []
    discard: []
refused_lists:
  description:
    - The subscriptions whose list was refused this run. Their images are kept as they are (RV(plan.held)),
      except when the signer is revoked - then they are retired.
    - Each has C(source), C(endorser), C(identifier), C(revoked) and C(reasons), as in RV(lists).
  returned: always
  type: list
  elements: dict
  sample:
    - source: https://repo.example.org/lists/base.list
      endorser: example-it
      identifier: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
      revoked: false
      reasons: ["image list https://repo.example.org/lists/base.list: expired at 2024-05-01T00:00:00Z"]
images:
  description:
    - One entry per image added (or, with O(phase=download), downloaded) in this run, named by its
      C(identifier) (lower case), C(version) (C(hv:version)) and C(title) (C(dc:title)).
  returned: always
  type: list
  elements: dict
  contains:
    action:
      description:
        - V(added), V(downloaded) (O(phase=download)), V(downloading) (O(wait=false), the engine goes on downloading),
          or V(added (same bytes as <identifier> <version>, no transfer)) when a held image or another image of this run
          already has its bytes.
      type: str
    key:
      description: The torrent's v1 info-hash, the engine's key for the download.
      type: str
      returned: with O(wait=false), for an image that is downloaded
    size:
      description: The image's size in bytes.
      type: int
      returned: with O(wait=false), for an image that is downloaded
    total_done:
      description: Bytes the engine held when the module returned.
      type: int
      returned: with O(wait=false), for an image that is downloaded
    seconds:
      description: Seconds from the start of the transfer to the end of its verification (of this run).
      type: float
    transfer_seconds:
      description:
        - Seconds from the engine taking the torrent to the engine holding every byte (its C(added_at) and C(completed_at)),
          also when an earlier run started the download; null when the engine does not say (a torrent not complete yet).
      type: float
    bytes_from_peers:
      description: Bytes the engine received from other peers (hypervisors and seeds).
      type: int
    bytes_from_web_seed:
      description: Bytes the engine received from the web seed (the image's C(hv:uri)).
      type: int
    bytes_from_seeds:
      description: Bytes the engine received from peers that had the whole image.
      type: int
    path:
      description: The image file (in the store, or in its download directory with O(phase=download)).
      type: str
  sample:
    - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      version: "3"
      title: Debian 12
      action: added
      seconds: 41.7
      bytes_from_peers: 1610612736
      bytes_from_web_seed: 4194304
      bytes_from_seeds: 536870912
      path: /var/lib/vmic/images/6f1e2d3c-4b5a-4968-8776-655443322110/3/debian12.qcow2
needs_activation:
  description:
    - Whether the activation phase would change anything on this host (an image to add, one to retire, a stale download
      to discard, a held image to make root's and read-only). V(false) is the no-op fast path - C(rollout.yml) activates
      no host for which it is false.
  returned: with O(phase=download), when not in check mode
  type: bool
  sample: true
retired:
  description:
    - Images retired in this run, and downloads discarded because no image to add uses them, each named by
      its C(identifier) (the image UUID) and C(version).
  returned: always
  type: list
  elements: dict
  contains:
    action:
      description: V(retired (archive)), V(retired (delete)) or V(discarded download).
      type: str
    engine_error:
      description: Why the engine could not be told to stop seeding the image (the image is retired all the same).
      type: str
      returned: when the engine could not be told
  sample:
    - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      version: "2"
      action: retired (archive)
in_use:
  description:
    - Images that should be retired but are open by a process; kept until a later run. Each has the
      C(identifier) and C(version) of RV(retired), and C(path).
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The image file that is open.
      type: str
  sample:
    - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      version: "2"
      path: /var/lib/vmic/images/6f1e2d3c-4b5a-4968-8776-655443322110/2/debian12.qcow2
held:
  description:
    - The images the store holds after the run, each with the fields of RV(vmic.fleet.image_info#module:images)
      (identifier, version, path, size, sha512, list, title, verified_at, btih_v1).
  returned: when not in check mode
  type: list
  elements: dict
  sample:
    - identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      version: "3"
      title: Debian 12
      path: /var/lib/vmic/images/6f1e2d3c-4b5a-4968-8776-655443322110/3/debian12.qcow2
lists:
  description: The verdict of each subscribed list, in the order of O(lists).
  returned: always
  type: list
  elements: dict
  contains:
    source:
      description: The list's O(lists[].src).
      type: str
    valid:
      description: Whether the list passed every check.
      type: bool
    reasons:
      description: Every reason the list was refused (empty when valid).
      type: list
      elements: str
    revoked:
      description: Whether the site's CRLs revoke the signer.
      type: bool
    endorser:
      description: The subscription's endorser.
      type: str
    identifier:
      description: The subscription's list UUID.
      type: str
    version:
      description: The list's C(hv:version), when its signed payload could be read.
      type: str
    kept_copy:
      description:
        - With O(phase=activate) - V(used) (verified from the copy the download phase kept, not fetched), V(refused)
          (that copy was refused, the list too), V(superseded) (the copy was older than the state, the list was
          fetched); null when the list was fetched without a kept copy.
      type: str
  sample:
    - source: https://repo.example.org/lists/base.list
      valid: true
      reasons: []
      revoked: false
      endorser: example-it
      identifier: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
      version: "42"
      kept_copy: used
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.approvedset import check_known
from ansible_collections.vmic.fleet.plugins.module_utils.argspec import engine_argument_spec, policy_argument_spec, trust_argument_spec
from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import fail_missing_dependency
from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import (
    KeptCopies, TransferFailed, engine_from_spec, engine_owner, needs_activation, plan_sync, retire, transfer, verify_lists)
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy
from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore


def main():
    module = AnsibleModule(
        argument_spec=dict(
            lists=dict(type="list", elements="dict", required=True, options=dict(
                src=dict(type="str", required=True),
                endorser=dict(type="str", required=True),
                identifier=dict(type="str", required=True, aliases=["expected_identifier"]),
            )),
            **trust_argument_spec(),
            **policy_argument_spec(),
            known_images=dict(type="list", elements="str", default=[]),
            profile=dict(type="dict", apply_defaults=True, options=dict(
                cluster=dict(type="str"),
                subcluster=dict(type="str"),
                hypervisor=dict(type="str"),
                arch=dict(type="str"),
            )),
            store_dir=dict(type="path", default="/var/lib/vmic/images"),
            state_dir=dict(type="path", default="/var/lib/vmic/lists"),
            retire=dict(type="str", choices=["archive", "delete"], default="archive"),
            archive_dir=dict(type="path", default="/var/lib/vmic/archive"),
            **engine_argument_spec(),
            phase=dict(type="str", choices=["all", "download", "activate"], default="all"),
            timeout=dict(type="int", default=3600),
            wait=dict(type="bool", default=True),
            linger=dict(type="float", default=0.0),
            https_ca_file=dict(type="path"),
            allow_http=dict(type="bool", default=False),
            allow_legacy_digests=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("ca_path", "ca_file")],
        required_one_of=[("ca_path", "ca_file")],
        supports_check_mode=True,
    )
    params = module.params
    if params["linger"] < 0 or params["linger"] > params["timeout"]:
        module.fail_json(msg="image_sync: linger must be between 0 and timeout (%d s), not %s" % (params["timeout"], params["linger"]))
    if not params["wait"] and params["phase"] != "download":
        module.fail_json(msg="image_sync: wait=false is for phase=download only (phase %s commits, which needs the downloads)" % params["phase"])
    deadline = time.time() + params["timeout"]
    result = dict(changed=False, images=[], retired=[], in_use=[], lists=[], plan={}, refused_lists=[])
    try:
        trust = TrustStore(ca_path=params["ca_path"], ca_file=params["ca_file"], crl_file=params["crl_file"], crl_check=params["crl_check"])
        registry = EndorserRegistry(params["endorsers"])
        policy = Policy(params["policy"])
        store = ImageStore(params["store_dir"], params["archive_dir"])
        state = ListStateStore(params["state_dir"])
        kept = KeptCopies(params["state_dir"])
        verdicts = verify_lists(params["lists"], trust, registry, state, allow_legacy_digests=params["allow_legacy_digests"],
                                record=not module.check_mode, https_ca_file=params["https_ca_file"], allow_http=params["allow_http"],
                                kept=kept if params["phase"] == "activate" else None)
        result["lists"] = [dict(source=v.source, valid=v.valid, reasons=v.reasons, revoked=v.revoked, endorser=v.subscription["endorser"],
                                identifier=v.subscription["identifier"], version=v.version, kept_copy=v.kept_copy) for v in verdicts]
        for verdict in verdicts:
            if verdict.kept_reason:
                module.warn(verdict.kept_reason)
        plan = plan_sync(verdicts, policy, params["profile"], store, known=check_known(params["known_images"]))
        result["plan"] = plan.to_dict()
        result["refused_lists"] = result["plan"]["refused"]
        for refused in plan.refused:
            module.warn("image list %s (endorser %s) refused%s; %s" % (
                refused["source"], refused["endorser"],
                ", its signer is revoked: its images are withdrawn" if refused["revoked"] else ", its images are kept as they are",
                "; ".join(refused["reasons"])))
        for conflict in plan.conflicts:
            module.warn(conflict)
        downloading = params["phase"] == "download"
        result["changed"] = bool(plan.add or ((plan.retire or plan.stale_downloads) and not downloading))
        if module._diff:
            result["diff"] = plan.diff()
        if module.check_mode:
            module.exit_json(**result)
        engine = engine_from_spec(params["engine"])    # also without images to add or retire: stale downloads are discarded
        if downloading:
            result["needs_activation"] = needs_activation(plan, store)
            # the activation of this rollout verifies these very bytes again, offline (the repository may be gone by then)
            kept.keep_for_activation(verdicts, result["needs_activation"])
        result["images"] = transfer(plan, store, engine, torrent_module, deadline, https_ca_file=params["https_ca_file"],
                                    commit=not downloading, owner=engine_owner(params["engine"]), allow_http=params["allow_http"],
                                    wait=params["wait"], kept=kept if params["phase"] != "all" else None, linger=params["linger"])
        if not downloading:
            result["retired"], result["in_use"] = retire(plan, store, engine, params["retire"])
            kept.activated(verdicts)
            for image in plan.keep:
                if store.take_ownership(image):
                    module.warn("image %s %s was writable by others (an earlier release's store); it is root's and read-only now: "
                                "check it with image_info verify" % (image.identifier, image.version))
        if result["in_use"]:
            module.warn("images kept because a process holds them open: %s"
                        % ", ".join("%s %s" % (item["identifier"], item["version"]) for item in result["in_use"]))
        result["changed"] = bool(result["images"] or result["retired"])
        result["held"] = [image.to_dict() for image in store.images()]
    except TransferFailed as exc:
        module.fail_json(msg=str(exc), **result)
    except MissingDependencyError as exc:
        fail_missing_dependency(module, exc)
    except VmicError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
