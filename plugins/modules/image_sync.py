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
  - Suited to C(async)/C(poll) so every host downloads at once.
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
  ca_path:
    description: IGTF-layout directory of trust anchors. Exactly one of O(ca_path) and O(ca_file).
    type: path
  ca_file:
    description: PEM bundle of trust anchors.
    type: path
  crl_file:
    description: PEM CRLs to use with O(ca_file).
    type: path
  crl_check:
    description: Require CRLs and refuse revoked certificates.
    type: bool
    default: true
  endorsers:
    description: Trusted endorsers (C(name), C(dn), C(ca), optional C(urls)), as for M(vmic.fleet.imagelist_verify).
    type: list
    elements: dict
    required: true
  policy:
    description: The site policy, as for M(vmic.fleet.image_policy).
    type: dict
    required: true
  known_images:
    description:
      - Identities (C(endorser/identifier)) the site approved before - the keys of the approved set that
        C(publish.yml) records (C(approved.json)). They decide C(new_images=refuse) exactly as on the
        controller, on an old host as on a fresh one.
    type: list
    elements: str
    default: []
  profile:
    description: This host's profile - C(cluster), C(subcluster), C(hypervisor), C(arch).
    type: dict
    default: {}
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
  engine:
    description:
      - The engine to use - C(kind) (V(libtorrent) or V(rtorrent)), C(socket) (its control socket) and,
        for an engine that does not run as root, C(user) (required for V(rtorrent)) - only the image's
        download directory is handed to that user; root takes the finished file from it, hashes it again
        and commits it root's and read-only, and the engine seeds it from there.
    type: dict
    default: {kind: libtorrent, socket: /run/vmic-engine/engine.sock}
  phase:
    description:
      - V(all) downloads, verifies, commits and retires in one run.
      - V(download) only downloads and verifies into the partial area (the engine seeds it meanwhile);
        the store is not changed. A rollout runs it on every host at once.
      - V(activate) commits what is downloaded (verifying it again) and retires; a rollout runs it in
        batches with a canary. Anything not yet downloaded is downloaded first.
    type: str
    choices: [all, download, activate]
    default: all
  timeout:
    description: Seconds to wait for all downloads before giving up (nothing is committed then).
    type: int
    default: 3600
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
"""

RETURN = r"""
plan:
  description:
    - Identifiers and versions to add, keep, retire, and hold (kept as they are because their list was
      refused); C(refused) lists (source, endorser, identifier, revoked, reasons); C(conflicts); C(discard),
      downloads that no image to add uses any more (withdrawn before activation), dropped at activation.
  returned: always
  type: dict
refused_lists:
  description: The subscriptions whose list was refused this run, with the reasons.
  returned: always
  type: list
  elements: dict
images:
  description: Per image added - identifier, version, seconds, bytes_from_peers, bytes_from_web_seed, bytes_from_seeds, path.
  returned: always
  type: list
  elements: dict
retired:
  description:
    - Images retired in this run (identifier, version, action), and downloads discarded because no image
      to add uses them (action C(discarded download)). C(engine_error) says when the engine could not be
      told to stop seeding.
  returned: always
  type: list
  elements: dict
in_use:
  description: Images that should be retired but are open by a process; kept until a later run.
  returned: always
  type: list
  elements: dict
held:
  description: The images the store holds after the run (identifier, version, path, size, sha512, list, title).
  returned: when not in check mode
  type: list
  elements: dict
lists:
  description: Verdict of each list (source, valid, reasons, version).
  returned: always
  type: list
  elements: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.approvedset import check_known
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import (
    TransferFailed, engine_from_spec, engine_owner, plan_sync, retire, transfer, verify_lists)
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
            ca_path=dict(type="path"),
            ca_file=dict(type="path"),
            crl_file=dict(type="path"),
            crl_check=dict(type="bool", default=True),
            endorsers=dict(type="list", elements="dict", required=True),
            policy=dict(type="dict", required=True),
            known_images=dict(type="list", elements="str", default=[]),
            profile=dict(type="dict", default={}),
            store_dir=dict(type="path", default="/var/lib/vmic/images"),
            state_dir=dict(type="path", default="/var/lib/vmic/lists"),
            retire=dict(type="str", choices=["archive", "delete"], default="archive"),
            archive_dir=dict(type="path", default="/var/lib/vmic/archive"),
            engine=dict(type="dict", default={"kind": "libtorrent", "socket": "/run/vmic-engine/engine.sock"}),
            phase=dict(type="str", choices=["all", "download", "activate"], default="all"),
            timeout=dict(type="int", default=3600),
            https_ca_file=dict(type="path"),
            allow_http=dict(type="bool", default=False),
            allow_legacy_digests=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("ca_path", "ca_file")],
        required_one_of=[("ca_path", "ca_file")],
        supports_check_mode=True,
    )
    params = module.params
    deadline = time.time() + params["timeout"]
    result = dict(changed=False, images=[], retired=[], in_use=[], lists=[], plan={}, refused_lists=[])
    try:
        trust = TrustStore(ca_path=params["ca_path"], ca_file=params["ca_file"], crl_file=params["crl_file"], crl_check=params["crl_check"])
        registry = EndorserRegistry(params["endorsers"])
        policy = Policy(params["policy"])
        store = ImageStore(params["store_dir"], params["archive_dir"])
        state = ListStateStore(params["state_dir"])
        verdicts = verify_lists(params["lists"], trust, registry, state, allow_legacy_digests=params["allow_legacy_digests"],
                                record=not module.check_mode, https_ca_file=params["https_ca_file"], allow_http=params["allow_http"])
        result["lists"] = [dict(source=v["source"], valid=v["valid"], reasons=v["reasons"], revoked=bool(v.get("revoked")),
                                endorser=v["subscription"]["endorser"], identifier=v["subscription"]["identifier"],
                                version=(v.get("metadata") or {}).get("hv:version")) for v in verdicts]
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
        result["images"] = transfer(plan, store, engine, torrent_module, deadline, https_ca_file=params["https_ca_file"],
                                    commit=not downloading, owner=engine_owner(params["engine"]), allow_http=params["allow_http"])
        if not downloading:
            result["retired"], result["in_use"] = retire(plan, store, engine, params["retire"])
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
    except VmicError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
