# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """The trust options (anchors, CRLs, endorsers) of every module that verifies image lists (argument spec: module_utils/argspec.py)."""

    DOCUMENTATION = r"""
options:
  ca_path:
    description:
      - Directory of trust anchors in IGTF layout (C(<hash>.0) certificates, C(<hash>.r0) CRLs, and the
        C(.namespaces) / C(.signing_policy) files where present), for example C(/etc/grid-security/certificates).
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
      - Require a valid CRL of the site's trust anchors for every CA in the signer's chain and refuse revoked
        certificates. CRLs a signed list carries itself are never used.
      - Turning this off is meant for test set-ups only.
    type: bool
    default: true
  endorsers:
    description:
      - The endorsers this site trusts. Names must be unique, and so must (O(endorsers[].dn), O(endorsers[].ca))
        pairs and catalogue URLs.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Short name of the endorser, used by subscriptions and policy rules (letters, digits, C(.), C(_), C(-)).
        type: str
        required: true
      dn:
        description: Subject DN of the endorser's certificate (one-line C(/C=../CN=..) or RFC 4514 form), compared as an X.509 name.
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
      description:
        description: Free text about the endorser, for people.
        type: str
      urls:
        description:
          - Catalogue URLs this endorser signs. When given, a list from this endorser is accepted only
            when its source is one of them. What a list says about itself (C(hv:uri)) proves nothing.
        type: list
        elements: str
        default: []
"""
