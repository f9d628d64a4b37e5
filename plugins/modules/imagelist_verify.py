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
  ca_path:
    description:
      - Directory of trust anchors in IGTF layout (C(<hash>.0) certificates, C(<hash>.r0) CRLs),
        for example C(/etc/grid-security/certificates).
      - Exactly one of O(ca_path) and O(ca_file) is required.
    type: path
  ca_file:
    description: PEM file of trust anchors (a CA bundle).
    type: path
  crl_file:
    description: PEM file of CRLs to use with O(ca_file).
    type: path
  crl_check:
    description:
      - Require a valid CRL for every CA in the signer's chain and refuse revoked certificates.
      - Turning this off is meant for test set-ups only.
    type: bool
    default: true
  endorsers:
    description: The endorsers this site trusts.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Short name of the endorser, used by policy rules.
        type: str
        required: true
      dn:
        description: Subject DN of the endorser's certificate (one-line C(/C=../CN=..) or RFC 4514 form).
        type: str
        required: true
      ca:
        description: Issuer DN of the endorser's certificate.
        type: str
        required: true
      ca_fingerprint:
        description:
          - SHA-256 fingerprint of the certificate of the CA that issues the endorser's certificate
            (hex, colons allowed). The signer must chain through that very certificate, not merely a CA
            of the same name. Without it, the pin is the one trust anchor whose subject is O(endorsers[].ca);
            none or several such anchors refuse the endorser.
        type: str
      urls:
        description:
          - Catalogue URLs this endorser signs. When given, a list from this endorser is accepted only
            when its source is one of them. What a list says about itself (C(hv:uri)) proves nothing.
        type: list
        elements: str
        default: []
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
  description: List-level fields (dc:identifier, hv:version, dates, hv:endorser, ...), when the signature was valid.
  returned: when the signed payload could be parsed
  type: dict
images:
  description: The images of the list, as signed, with C(hv:size) as an integer.
  returned: always
  type: list
  elements: dict
signer_dn:
  description: Canonical subject DN of the signer.
  returned: when a signer was found
  type: str
issuer_dn:
  description: Canonical issuer DN of the signer.
  returned: when a signer was found
  type: str
digest:
  description: Digest algorithm of the signature.
  returned: when a signer was found
  type: str
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

from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.fetch import fetch_bytes
from ansible_collections.vmic.fleet.plugins.module_utils.listverify import verify_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="str", required=True),
            ca_path=dict(type="path"),
            ca_file=dict(type="path"),
            crl_file=dict(type="path"),
            crl_check=dict(type="bool", default=True),
            endorsers=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                dn=dict(type="str", required=True),
                ca=dict(type="str", required=True),
                ca_fingerprint=dict(type="str"),
                urls=dict(type="list", elements="str", default=[]),
            )),
            state_dir=dict(type="path"),
            endorser=dict(type="str"),
            expected_identifier=dict(type="str", aliases=["identifier"]),
            fail_on_invalid=dict(type="bool", default=True),
            allow_legacy_digests=dict(type="bool", default=False),
            allow_http=dict(type="bool", default=False),
            https_ca_file=dict(type="path"),
            max_bytes=dict(type="int", default=16 * 1024 * 1024),
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
                                    allow_legacy_digests=params["allow_legacy_digests"],
                                    record=not module.check_mode, max_bytes=params["max_bytes"])
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
