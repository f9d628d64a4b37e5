"""Revocation is judged by the site's CRLs only: a CRL inside the envelope never stands in for them.

The envelopes are real: signed here, then OpenSSL's own CMS_add1_crl adds a CRL to the unsigned
``crls`` field, as anyone holding a signed list (a revoked endorser, a thief of its key) can.
"""

import base64
import os

from cryptography.hazmat.primitives import serialization

from pki import embed_crls
from test_smime import SOURCE, assert_refused, sign, split_envelope, wrap_base64

from ansible_collections.vmic.fleet.plugins.module_utils.smime import verify_detached
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import TrustStore


def with_embedded_crls(envelope, crl_pems):
    head, signature, tail = split_envelope(envelope)
    der = embed_crls(base64.b64decode(signature), crl_pems)
    return head + wrap_base64(der) + tail


def site_dir(pki, path, root_crl_pem=None, with_crls_of=None):
    """A CA directory of the trusted CAs; the root's CRL replaced by ``root_crl_pem`` when given."""
    directory = pki.write_ca_dir(str(path), crls_of=with_crls_of)
    if root_crl_pem is not None:
        with open(os.path.join(directory, "%s.r0" % pki.root.hash), "wb") as handle:
            handle.write(root_crl_pem)
    return directory


def test_embedded_stale_crl_revocation_bypass_refused(pki, tmp_path):
    """A revoked endorser embeds its CA's previous, still time-valid CRL: the site's newer CRL wins."""
    stolen = pki.endorser("stolen")
    crl_v1 = pki.crl_pem(pki.root, revoked=(), number=1, last_update_days=-30)          # what the thief kept
    crl_v2 = pki.crl_pem(pki.root, revoked=(stolen,), number=2, last_update_days=-1)   # what fetch-crl installed
    trust = TrustStore(ca_path=site_dir(pki, tmp_path / "site", root_crl_pem=crl_v2))
    envelope = with_embedded_crls(sign(stolen), [crl_v1])

    verdict = verify_detached(envelope, trust, SOURCE)
    assert_refused(verdict, "signer %s: certificate revoked (judged by the site's CRLs only)" % stolen.dn)
    assert verdict.revoked is True
    # The same list without the embedded CRL is refused as well, and any other endorser is unaffected.
    assert verify_detached(sign(stolen), trust, SOURCE).revoked is True
    good = verify_detached(with_embedded_crls(sign(pki.good), [crl_v1]), trust, SOURCE)
    assert good.valid and good.revoked is False, good.reasons
    assert good.chain_pems == [pki.good.cert_pem]


def test_embedded_crl_of_a_revoked_intermediate_ca_refused(pki, tmp_path):
    """The root's CRL revokes the intermediate CA; an older root CRL in the envelope does not hide it."""
    crl_v1 = pki.crl_pem(pki.root, revoked=(), number=1, last_update_days=-30)
    crl_v2 = pki.crl_pem(pki.root, revoked=(pki.intermediate,), number=2, last_update_days=-1)
    trust = TrustStore(ca_path=site_dir(pki, tmp_path / "site", root_crl_pem=crl_v2))
    verdict = verify_detached(with_embedded_crls(sign(pki.via_intermediate), [crl_v1]), trust, SOURCE)
    assert_refused(verdict, "signer %s: the CA certificate" % pki.via_intermediate.dn, "VMIC Test Intermediate CA",
                   "of its chain is revoked (judged by the site's CRLs only)")
    assert verdict.revoked is True


def test_embedded_crl_for_a_ca_without_site_crl_refused(pki, tmp_path):
    """The site has no CRL of the intermediate CA: a CRL brought in the envelope does not replace it."""
    trust = TrustStore(ca_path=site_dir(pki, tmp_path / "site", with_crls_of=(pki.root, pki.other_ca)))
    verdict = verify_detached(with_embedded_crls(sign(pki.via_intermediate), [pki.intermediate.crl_pem]), trust, SOURCE)
    assert_refused(verdict, "unable to get certificate CRL", "run fetch-crl", "judged by the site's trust anchors and CRLs only")
    assert verdict.revoked is False


def test_embedded_crl_bypass_refused_with_ca_bundle_and_crl_file(pki, tmp_path):
    stolen = pki.endorser("stolen")
    crl_v1 = pki.crl_pem(pki.root, revoked=(), number=1, last_update_days=-30)
    crl_file = tmp_path / "crls.pem"
    crl_file.write_bytes(pki.crl_pem(pki.root, revoked=(stolen,), number=2) + pki.intermediate.crl_pem + pki.other_ca.crl_pem)
    trust = TrustStore(ca_file=pki.ca_file, crl_file=str(crl_file))
    verdict = verify_detached(with_embedded_crls(sign(stolen), [crl_v1]), trust, SOURCE)
    assert_refused(verdict, "certificate revoked (judged by the site's CRLs only)")
    assert verdict.revoked is True


def test_embedded_crl_is_really_in_the_envelope(pki):
    """The attack input is what it claims: OpenSSL reads a crls field from it."""
    envelope = with_embedded_crls(sign(pki.good), [pki.root.crl_pem])
    _head, signature, _tail = split_envelope(envelope)
    der = base64.b64decode(signature)
    assert pki.root.crl.public_bytes(serialization.Encoding.DER) in der
