#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: imagelist_verify
short_description: Fetch and verify a signed HEPiX image list
version_added: 0.1.0
description:
  - Fetches a HEPiX image list (detached S/MIME, C(multipart/signed)) from a path or an HTTPS URL and
    verifies it, in this order - size limits, exactly one signer, chain to a trust anchor, validity,
    revocation (CRL), digest strength, schema, signer DN = C(hv:dn), signer issuer = C(hv:ca), signer is
    a trusted endorser for this catalogue, list UUID is the subscribed one, created <= now <= expires,
    C(hv:version) not lower than the last accepted one (and the same version with different bytes refused).
  - Signature checks run the C(openssl) command, so verdicts are those of C(openssl cms -verify).
  - A refused list is a result with C(valid=false) and every reason; with O(fail_on_invalid=true) (the
    default) the task then fails with those reasons. A refused list never changes the stored state.
author:
  - vmic.fleet contributors (@vmic)
requirements:
  - the C(openssl) command (OpenSSL 1.1.1 or later)
  - the C(cryptography) Python library (to read certificates)
options:
  src:
    description: Path or C(https://) URL of the signed image list.
    type: str
    required: true
  state_dir:
    description:
      - Directory where the last accepted version and digest of each list, by (endorser, list UUID), are
        kept, to refuse rollback and replays. Without it, no rollback protection.
    type: path
  endorser:
    description:
      - Name of the endorser (in O(endorsers)) the list must be signed by; any other signer is refused.
        Required with O(state_dir).
    type: str
  expected_identifier:
    description: The list UUID this subscription expects; a list with another C(dc:identifier) is refused.
    type: str
    aliases: [identifier]
  url:
    description:
      - The URL the site subscribes to, when O(src) is a local copy of that list (a publisher checking
        a list before it is served). The endorser's C(urls) are checked against it instead of O(src).
        What the list says about itself (C(hv:uri)) is never used for that.
    type: str
  fail_on_invalid:
    description: Fail the task when the list is refused. With V(false), the verdict is returned.
    type: bool
    default: true
  allow_legacy_digests:
    description: Accept SHA-1 signatures (as in lists made around 2011). Refused by default.
    type: bool
    default: false
  allow_http:
    description: Allow a plain C(http://) O(src). The signature still protects the content.
    type: bool
    default: false
  https_ca_file:
    description: CA bundle to check the HTTPS server's certificate with (default - the system store).
    type: path
  max_bytes:
    description: Largest signed list accepted, in bytes.
    type: int
    default: 16777216
  timeout:
    description: Network timeout in seconds.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: In check mode the list is fetched and verified but no state is written.
  diff_mode:
    support: full
    description: Shows the accepted version of the list before and after.
extends_documentation_fragment:
  - vmic.fleet.trust
  - vmic.fleet.action_group
"""

EXAMPLES = r"""
- name: Verify the endorser's image list
  vmic.fleet.imagelist_verify:
    src: https://repo.example.org/lists/base.list
    ca_path: /etc/grid-security/certificates
    endorsers:
      - name: example-it
        dn: /DC=org/DC=example/O=Example/CN=Image Endorser
        ca: /DC=org/DC=example/CN=Example CA
        urls: [https://repo.example.org/lists/base.list]
    endorser: example-it
    expected_identifier: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
    state_dir: /var/lib/vmic/lists
  register: base_list

- name: Verify without failing, to report the verdict
  vmic.fleet.imagelist_verify:
    src: /srv/lists/untrusted.list
    ca_file: /etc/pki/endorser-cas.pem
    endorsers: "{{ vmic_endorsers }}"
    fail_on_invalid: false
  register: verdict
"""

RETURN = r"""
valid:
  description: Whether the list passed every check.
  returned: always
  type: bool
reasons:
  description: Every reason the list was refused (empty when valid).
  returned: always
  type: list
  elements: str
  sample: ["image list https://repo/x.list: signer /CN=X is not hv:dn /CN=Y"]
metadata:
  description: The list-level fields of the signed payload (V(null) when it could not be read).
  returned: always
  type: dict
  contains:
    dc:identifier:
      description: The list UUID (lower case).
      type: str
    dc:title:
      description: The list's title.
      type: str
    dc:description:
      description: The list's description, if any.
      type: str
    dc:source:
      description: The list's source, if any.
      type: str
    dc:date:created:
      description: When the list was signed (C(YYYY-MM-DDTHH:MM:SSZ)).
      type: str
    dc:date:expires:
      description: When the list expires.
      type: str
    hv:version:
      description: The list's version (refused when lower than the one accepted before).
      type: str
    hv:uri:
      description: The URL the list gives for itself (proves nothing; O(endorsers[].urls) binds sources).
      type: str
    ad:vo:
      description: The list's VO, if any (the default of its images).
      type: str
    hv:endorser:
      description: The endorsers the list names - C(hv:dn), C(hv:ca) and, if given, C(hv:email), C(dc:creator).
      type: list
      elements: dict
    legacy_unwrapped:
      description: Whether the list was a bare object without the C(hv:imagelist) wrapper (old vmcaster lists).
      type: bool
  sample:
    dc:identifier: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
    dc:title: Base images
    dc:description: Images of the site's base catalogue
    dc:source: null
    dc:date:created: "2025-03-01T08:00:00Z"
    dc:date:expires: "2025-03-29T08:00:00Z"
    hv:version: "42"
    hv:uri: https://repo.example.org/lists/base.list
    ad:vo: null
    hv:endorser:
      - hv:dn: /DC=org/DC=example/O=Example/CN=Image Endorser
        hv:ca: /DC=org/DC=example/CN=Example CA
    legacy_unwrapped: false
images:
  description:
    - The images of the list, each the signed C(hv:image) object with C(dc:identifier) in lower case,
      C(hv:size) as an integer, C(hv:version) as a string and C(ad:vo) from the list when the image gives none.
      Fields not listed here are returned as signed too.
  returned: always
  type: list
  elements: dict
  contains:
    dc:identifier:
      description: The image UUID.
      type: str
    dc:title:
      description: The image's title.
      type: str
    hv:uri:
      description: Where the image can be downloaded (the web seed of its torrent).
      type: str
    hv:size:
      description: Size in bytes.
      type: int
    hv:version:
      description: The image's version.
      type: str
    sl:checksum:sha512:
      description: sha512 of the image file.
      type: str
    sl:arch:
      description: Architecture, if given.
      type: str
    sl:os:
      description: Operating system, if given.
      type: str
    sl:osversion:
      description: Operating system version, if given.
      type: str
    hv:hypervisor:
      description: Hypervisor type, if given.
      type: str
    hv:format:
      description: Image format, if given.
      type: str
    dc:date:expires:
      description: The image's own expiry date, if given.
      type: str
    vmic:torrent:
      description: URL of the image's C(.torrent), for the hypervisors' BitTorrent transfer.
      type: str
    vmic:torrent_sha256:
      description: sha256 of that C(.torrent) file.
      type: str
    vmic:btih_v1:
      description: v1 info-hash of the torrent.
      type: str
    vmic:btih_v2:
      description: v2 info-hash of the torrent.
      type: str
    vmic:piece_size:
      description: Piece size of the torrent in bytes.
      type: int
  sample:
    - dc:identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
      dc:title: Debian 12
      hv:uri: https://repo.example.org/images/debian12.qcow2
      hv:size: 2147483648
      hv:version: "3"
      sl:checksum:sha512: 9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043
      sl:arch: x86_64
      sl:os: Linux
      sl:osversion: "12"
      hv:hypervisor: kvm
      hv:format: qcow2
      vmic:torrent: https://repo.example.org/torrents/debian12.qcow2.torrent
      vmic:torrent_sha256: 4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce
      vmic:btih_v1: 3c1f5b0e2a6d4f8e9b7a1c2d3e4f5a6b7c8d9e0f
      vmic:btih_v2: 8d2e6f0a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e
      vmic:piece_size: 4194304
signer_dn:
  description: Canonical subject DN of the signer.
  returned: when a signer was found
  type: str
  sample: /DC=org/DC=example/OU=IT/CN=Image Endorser
issuer_dn:
  description: Canonical issuer DN of the signer.
  returned: when a signer was found
  type: str
  sample: /DC=org/DC=example/CN=Example Grid CA
digest:
  description: Digest algorithm of the signature.
  returned: when a signer was found
  type: str
  sample: sha256
endorser:
  description: Name of the trusted endorser that signed the list.
  returned: when valid
  type: str
revoked:
  description: Whether the site's CRLs revoke the signer's certificate (or a CA of its chain).
  returned: always
  type: bool
sha256:
  description: sha256 of the signed payload.
  returned: when the signature was valid
  type: str
  sample: 5f0c6a3e8b1d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a
expired_images:
  description: Identifiers of images whose own expiry date has passed.
  returned: always
  type: list
  elements: str
previous_version:
  description: The version of this list accepted before this run (V(null) when none or no O(state_dir)).
  returned: always
  type: str
source:
  description: The O(src) the list was read from.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.argspec import trust_argument_spec
from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import fail_missing_dependency
from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.fetch import fetch_bytes
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_ENVELOPE_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.listverify import verify_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="str", required=True),
            **trust_argument_spec(),
            state_dir=dict(type="path"),
            endorser=dict(type="str"),
            expected_identifier=dict(type="str", aliases=["identifier"]),
            url=dict(type="str"),
            fail_on_invalid=dict(type="bool", default=True),
            allow_legacy_digests=dict(type="bool", default=False),
            allow_http=dict(type="bool", default=False),
            https_ca_file=dict(type="path"),
            max_bytes=dict(type="int", default=MAX_ENVELOPE_BYTES),
            timeout=dict(type="int", default=30),
        ),
        mutually_exclusive=[("ca_path", "ca_file")],
        required_one_of=[("ca_path", "ca_file")],
        required_by={"state_dir": ("endorser",)},
        supports_check_mode=True,
    )
    params = module.params
    # Suboptions fill absent keys with None; the registry takes only what was given.
    endorsers = [dict((key, value) for key, value in entry.items() if value is not None) for entry in params["endorsers"]]
    try:
        trust = TrustStore(ca_path=params["ca_path"], ca_file=params["ca_file"], crl_file=params["crl_file"],
                           crl_check=params["crl_check"])
        registry = EndorserRegistry(endorsers)
        state = ListStateStore(params["state_dir"]) if params["state_dir"] else None
        envelope = fetch_bytes(params["src"], params["max_bytes"], timeout=params["timeout"], ca_file=params["https_ca_file"],
                               allow_http=params["allow_http"], what="image list")
        verdict = verify_image_list(envelope, params["src"], trust, registry, state=state,
                                    expected_identifier=params["expected_identifier"], expected_endorser=params["endorser"],
                                    subscribed_url=params["url"],
                                    allow_legacy_digests=params["allow_legacy_digests"],
                                    record=not module.check_mode, max_bytes=params["max_bytes"])
    except MissingDependencyError as exc:
        fail_missing_dependency(module, exc)
    except VmicError as exc:
        module.fail_json(msg=str(exc))

    result = verdict.to_result()
    result["changed"] = bool(verdict.state_changed)
    if module._diff and verdict.image_list is not None:
        before = verdict.previous_version or "(none)"
        result["diff"] = {
            "before": "%s accepted hv:version: %s\n" % (verdict.image_list.identifier, before),
            "after": "%s accepted hv:version: %s\n" % (verdict.image_list.identifier, verdict.image_list.version if verdict.valid else before),
        }
    if not verdict.valid and params["fail_on_invalid"]:
        module.fail_json(msg="; ".join(verdict.reasons), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
