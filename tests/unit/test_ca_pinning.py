"""Each endorser is bound to its issuing CA certificate, not to the CA's name, and IGTF namespace
policies of the CA directory limit what each CA may sign.

The attacker is a CA the site trusts (``other_ca``): it issues a sub-CA with the victim CA's subject
name and, under it, a certificate with the victim endorser's subject.  The names all match; only the
keys tell them apart.
"""

import hashlib
import os
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from test_revocation import with_embedded_crls
from test_smime import SOURCE, assert_refused, sign

from ansible_collections.vmic.fleet.plugins.module_utils.errors import TrustError
from ansible_collections.vmic.fleet.plugins.module_utils.smime import verify_detached, verify_endorser_binding
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore

ROOT_CN = "VMIC Test Root CA"


def fingerprint(identity):
    return hashlib.sha256(identity.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture(scope="module")
def lookalike(pki):
    """(the look-alike CA, the forged endorser certificate) made by the trusted other_ca."""
    fake_ca = pki.make_ca("lookalike_root", ROOT_CN, issuer=pki.other_ca)
    forged = pki.leaf_with_subject("forged_good", pki.good.cert.subject, fake_ca)
    return fake_ca, forged


def victim_registry(pki, **extra):
    return EndorserRegistry([dict({"name": "victim", "dn": pki.good.dn, "ca": pki.root.dn}, **extra)])


def binding(pki, trust, identity, registry, chain=True):
    verdict = verify_detached(sign(identity, chain=chain), trust, SOURCE)
    endorser = registry.match(verdict.signer_name, verdict.issuer_name)
    assert endorser is not None, "the names match: that is the attack"
    return verdict, verify_endorser_binding(verdict, endorser, trust)


def copy_ca_dir(pki, tmp_path, name="certs"):
    directory = str(tmp_path / name)
    shutil.copytree(pki.ca_path, directory)
    return directory


# -- pinning to the CA certificate -------------------------------------------------------------

def test_lookalike_ca_impersonation_refused(pki, lookalike):
    """A sub-CA with the victim CA's name, from another trusted CA, cannot sign as the victim endorser."""
    fake_ca, forged = lookalike
    assert fake_ca.dn == pki.root.dn and forged.dn == pki.good.dn and forged.issuer_dn == pki.root.dn
    trust = TrustStore(ca_path=pki.ca_path, crl_check=False)
    verdict, reasons = binding(pki, trust, forged, victim_registry(pki))
    assert verdict.valid, verdict.reasons  # the chain itself is good: signer -> look-alike -> other_ca
    assert len(reasons) == 1
    assert reasons[0].startswith("endorser victim: the signer certificate is not issued by its pinned CA certificate %s (sha256 %s"
                                 % (pki.root.dn, fingerprint(pki.root))), reasons
    # The genuine endorser is bound.
    assert binding(pki, trust, pki.good, victim_registry(pki))[1] == []


def test_lookalike_ca_impersonation_with_embedded_crl_refused(pki, lookalike):
    """With CRL checks, the look-alike brings its own CRL in the envelope; the site has none for it."""
    fake_ca, forged = lookalike
    envelope = with_embedded_crls(sign(forged), [fake_ca.crl_pem])
    verdict = verify_detached(envelope, TrustStore(ca_path=pki.ca_path), SOURCE)
    assert_refused(verdict, "signer %s: unable to get certificate CRL" % forged.dn, "judged by the site's trust anchors and CRLs only")
    assert verify_endorser_binding(verdict, victim_registry(pki).by_name("victim"), TrustStore(ca_path=pki.ca_path))


def test_lookalike_ca_installed_as_anchor_needs_a_fingerprint_refused(pki, lookalike, tmp_path):
    """Two anchors with the victim CA's subject: without a fingerprint the endorser is bound to neither."""
    fake_ca, forged = lookalike
    directory = pki.write_ca_dir(str(tmp_path / "certs"), cas=pki.trusted + (fake_ca,))
    assert os.path.exists(os.path.join(directory, "%s.0" % pki.root.hash))
    trust = TrustStore(ca_path=directory, crl_check=False)
    _verdict, reasons = binding(pki, trust, pki.good, victim_registry(pki))
    assert len(reasons) == 1 and "endorser victim: 2 trust anchors have the subject of its CA %s" % pki.root.dn in reasons[0]
    assert "set ca_fingerprint" in reasons[0]
    pinned = victim_registry(pki, ca_fingerprint=":".join(fingerprint(pki.root)[i:i + 2].upper() for i in range(0, 64, 2)))
    assert binding(pki, trust, pki.good, pinned)[1] == []
    _verdict, reasons = binding(pki, trust, forged, pinned)
    assert len(reasons) == 1 and "is not issued by its pinned CA certificate" in reasons[0]


def test_pinned_fingerprint_of_another_certificate_refused(pki, tmp_path):
    trust = TrustStore(ca_path=pki.ca_path, crl_check=False)
    unknown = victim_registry(pki, ca_fingerprint="ab" * 32)
    _verdict, reasons = binding(pki, trust, pki.good, unknown)
    assert reasons == ["endorser victim: its pinned CA certificate (sha256 %s) is not a trust anchor of %s" % ("ab" * 32, trust.describe())]
    wrong = victim_registry(pki, ca_fingerprint=fingerprint(pki.intermediate))
    _verdict, reasons = binding(pki, trust, pki.good, wrong)
    assert len(reasons) == 1 and "its pinned CA certificate %s" % pki.intermediate.dn in reasons[0]
    assert "is not its CA %s" % pki.root.dn in reasons[0]
    # A CA bundle works the same way.
    bundle = TrustStore(ca_file=pki.ca_file, crl_check=False)
    assert binding(pki, bundle, pki.good, victim_registry(pki, ca_fingerprint=fingerprint(pki.root)))[1] == []


def test_endorser_ca_not_among_the_anchors_refused(pki, tmp_path):
    """The intermediate CA only in the envelope: the chain verifies, but there is no anchor to pin (fail closed)."""
    directory = pki.write_ca_dir(str(tmp_path / "certs"), cas=(pki.root, pki.other_ca))
    trust = TrustStore(ca_path=directory, crl_check=False)
    registry = EndorserRegistry([{"name": "sub", "dn": pki.via_intermediate.dn, "ca": pki.intermediate.dn}])
    verdict, reasons = binding(pki, trust, pki.via_intermediate, registry)
    assert verdict.valid, verdict.reasons
    assert len(reasons) == 1 and "endorser sub: no trust anchor of" in reasons[0] and pki.intermediate.dn in reasons[0]


def test_binding_without_signer_certificate_refused(pki):
    trust = TrustStore(ca_path=pki.ca_path)
    verdict = verify_detached(b"not signed", trust, SOURCE)
    reasons = verify_endorser_binding(verdict, victim_registry(pki).by_name("victim"), trust)
    assert reasons == ["endorser victim: the signer certificate is unknown, so its binding to the CA %s cannot be checked" % pki.root.dn]


@pytest.mark.parametrize("value", ["abc", "zz" * 32, 5])
def test_malformed_ca_fingerprint_refused(pki, value):
    with pytest.raises(TrustError, match="endorser victim: ca_fingerprint"):
        victim_registry(pki, ca_fingerprint=value)


# -- IGTF namespaces / signing_policy ----------------------------------------------------------

def write_policy(directory, ca, kind, text):
    path = os.path.join(directory, "%s.%s" % (ca.hash, kind))
    with open(path, "w") as handle:
        handle.write(text)
    return path


def trust_with_root_policy(pki, tmp_path, kind, text):
    """(a TrustStore of a copy of the CA directory with the root's policy file ``text``, that file's path)."""
    directory = copy_ca_dir(pki, tmp_path)
    path = write_policy(directory, pki.root, kind, text)
    return TrustStore(ca_path=directory), path


def stolen_registry(pki):
    stolen = pki.endorser("stolen")
    return stolen, EndorserRegistry([{"name": "good", "dn": pki.good.dn, "ca": pki.root.dn},
                                     {"name": "stolen", "dn": stolen.dn, "ca": pki.root.dn}])


def test_namespaces_forbidden_subject_refused(pki, tmp_path):
    policy = ('#NAMESPACES-VERSION: 1.0\n'
              '# only the good endorser and the intermediate CA\n'
              'TO Issuer "%s" \\\n'
              '    PERMIT Subject "/DC=org/DC=vmic-test/O=VMIC Test/CN=Endorser good"\n'
              'TO Issuer SELF PERMIT Subject "/DC=org/DC=vmic-test/O=VMIC Test/CN=VMIC Test Intermediate CA"\n' % pki.root.dn)
    trust, path = trust_with_root_policy(pki, tmp_path, "namespaces", policy)
    stolen, registry = stolen_registry(pki)
    assert binding(pki, trust, pki.good, registry)[1] == []
    _verdict, reasons = binding(pki, trust, stolen, registry)
    assert reasons == ["endorser stolen: CA %s may not sign subject %s (no entry of namespaces %s permits it)" % (pki.root.dn, stolen.dn, path)]
    # The intermediate CA is permitted by SELF, so its endorsers are bound.
    sub = EndorserRegistry([{"name": "sub", "dn": pki.via_intermediate.dn, "ca": pki.intermediate.dn}])
    assert binding(pki, trust, pki.via_intermediate, sub)[1] == []


def test_namespaces_deny_wins_and_intermediate_ca_refused(pki, tmp_path):
    policy = ('TO Issuer "%s" PERMIT Subject "/DC=org/DC=vmic-test/O=VMIC Test/CN=Endorser .*"\n'
              'to issuer "%s" deny subject "/dc=org/dc=vmic-test/o=vmic test/cn=endorser stolen"\n' % (pki.root.dn, pki.root.dn))
    trust, _path = trust_with_root_policy(pki, tmp_path, "namespaces", policy)
    stolen, registry = stolen_registry(pki)
    assert binding(pki, trust, pki.good, registry)[1] == []
    _verdict, reasons = binding(pki, trust, stolen, registry)
    assert len(reasons) == 1 and "may not sign subject %s (denied by entry 2 of namespaces" % stolen.dn in reasons[0]
    # The root may not sign the intermediate CA here: the intermediate's endorsers are refused, naming the CA.
    sub = EndorserRegistry([{"name": "sub", "dn": pki.via_intermediate.dn, "ca": pki.intermediate.dn}])
    _verdict, reasons = binding(pki, trust, pki.via_intermediate, sub)
    assert reasons and reasons[0].startswith("endorser sub: CA %s may not sign subject %s" % (pki.root.dn, pki.intermediate.dn))


def test_signing_policy_forbidden_subject_refused(pki, tmp_path):
    policy = ("# Globus signing policy\n"
              "access_id_CA   X509    '%s'\n"
              "pos_rights     globus  CA:sign\n"
              "cond_subjects  globus  '\"/DC=org/DC=vmic-test/O=VMIC Test/CN=Endorser g*\" \"/DC=org/DC=vmic-test/O=VMIC Test/CN=VMIC*\"'\n"
              % pki.root.dn)
    trust, path = trust_with_root_policy(pki, tmp_path, "signing_policy", policy)
    stolen, registry = stolen_registry(pki)
    assert binding(pki, trust, pki.good, registry)[1] == []
    _verdict, reasons = binding(pki, trust, stolen, registry)
    assert len(reasons) == 1 and "CA %s may not sign subject %s (no entry of signing_policy" % (pki.root.dn, stolen.dn) in reasons[0]
    # Both files: the namespaces file is the one that counts.
    write_policy(os.path.dirname(path), pki.root, "namespaces", 'TO Issuer SELF PERMIT Subject ".*"\n')
    trust = TrustStore(ca_path=os.path.dirname(path))
    assert binding(pki, trust, stolen, registry)[1] == []


@pytest.mark.parametrize("text", ["TO Issuer nobody PERMIT Subject \".*\"\n", 'TO Issuer SELF PERMIT Subject "(["\n', "x" * (300 * 1024)])
def test_unusable_policy_file_refuses_its_ca(pki, tmp_path, text):
    trust, _path = trust_with_root_policy(pki, tmp_path, "namespaces", text)
    _stolen, registry = stolen_registry(pki)
    _verdict, reasons = binding(pki, trust, pki.good, registry)
    assert len(reasons) == 1 and "endorser good: CA %s may sign nothing here: its namespaces" % pki.root.dn in reasons[0]
