"""Distinguished names compared as X.509 names, and the per-list state that stops rollback and replay."""

import copy
import os

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ansible_collections.vmic.fleet.plugins.module_utils import dn as dn_module
from ansible_collections.vmic.fleet.plugins.module_utils.dn import DNError, canonical_dn, same_dn
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore, StateError
from ansible_collections.vmic.fleet.plugins.module_utils.smime import sign_detached, verify_detached
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore

UUID = "4e186b44-2c64-40ea-97d5-e9e5c0bce059"


def test_dn_forms_agree():
    assert canonical_dn("CN=Owen Synge,OU=DESY,O=GermanGrid,C=DE") == "/C=DE/O=GermanGrid/OU=DESY/CN=Owen Synge"
    assert same_dn("/c=DE/o=GermanGrid/Email=a@b/CN=x", "/C=DE/O=GermanGrid/emailAddress=a@b/CN=x")
    assert canonical_dn(" /DC=org/DC=example/CN=host/x.example.org ") == "/DC=org/DC=example/CN=host/x.example.org"


@pytest.mark.parametrize("bad", ["", "garbage", "/C=DE/XX=1", "/CN=", "x" * 5000])
def test_bad_dn_refused(bad):
    with pytest.raises(DNError):
        canonical_dn(bad)


def _name(*rdns):
    """An x509.Name of the test DCs and O followed by ``rdns`` (each a list of (oid, value))."""
    base = [[(NameOID.DOMAIN_COMPONENT, "org")], [(NameOID.DOMAIN_COMPONENT, "vmic-test")], [(NameOID.ORGANIZATION_NAME, "VMIC Test")]]
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(oid, value) for oid, value in rdn]) for rdn in base + list(rdns)])


def _signed_by(pki, name, subject):
    identity = pki.leaf_with_subject(name, subject, pki.root)
    envelope = sign_detached(b'{"x": 1}\n', identity.cert_pem, identity.key_pem)
    verdict = verify_detached(envelope, TrustStore(ca_path=pki.ca_path), "https://repo.example.org/%s" % name)
    assert verdict.valid, verdict.reasons
    return verdict


def _matched(registry, verdict):
    # What the list verifier compares: the certificate's names as structures (display strings before they existed).
    return registry.match(getattr(verdict, "signer_name", verdict.signer_dn), getattr(verdict, "issuer_name", verdict.issuer_dn))


def test_dn_slash_collision_refused(pki):
    """A CN holding "/CN=" prints like two CNs; such a certificate from the same CA is not the endorser with two CNs."""
    victim_dn = "/DC=org/DC=vmic-test/O=VMIC Test/CN=Victim/CN=x"
    registry = EndorserRegistry([{"name": "victim", "dn": victim_dn, "ca": pki.root.dn}])
    genuine = _signed_by(pki, "victim-genuine", _name([(NameOID.COMMON_NAME, "Victim")], [(NameOID.COMMON_NAME, "x")]))
    assert _matched(registry, genuine).name == "victim"
    forged = _signed_by(pki, "victim-slash", _name([(NameOID.COMMON_NAME, "Victim/CN=x")]))
    assert forged.signer_dn == victim_dn  # the display strings are the same...
    assert _matched(registry, forged) is None  # ...the names are not
    assert not same_dn(forged.signer_name, genuine.signer_name)


def test_dn_multivalued_rdn_collision_refused(pki):
    """A multi-valued RDN CN=a+UID=x is not the two RDNs CN=a, UID=x."""
    registry = EndorserRegistry([{"name": "victim", "dn": "/DC=org/DC=vmic-test/O=VMIC Test/CN=a/UID=x", "ca": pki.root.dn}])
    forged = _signed_by(pki, "victim-multi", _name([(NameOID.COMMON_NAME, "a"), (NameOID.USER_ID, "x")]))
    assert _matched(registry, forged) is None
    genuine = _signed_by(pki, "victim-two-rdns", _name([(NameOID.COMMON_NAME, "a")], [(NameOID.USER_ID, "x")]))
    assert _matched(registry, genuine).name == "victim"
    # A registry entry that names the multi-valued RDN (either text form) matches it, and only it.
    for text in ("/DC=org/DC=vmic-test/O=VMIC Test/CN=a+UID=x", "UID=x+CN=a,O=VMIC Test,DC=vmic-test,DC=org"):
        multi = EndorserRegistry([{"name": "multi", "dn": text, "ca": pki.root.dn}])
        assert _matched(multi, forged).name == "multi"
        assert _matched(multi, genuine) is None


def test_dn_structure_from_text_and_certificate_agree():
    parse_dn = dn_module.parse_dn
    assert parse_dn("/C=DE/O=GermanGrid/CN=a+UID=x").rdns == ((("C", "DE"),), (("O", "GermanGrid"),), (("CN", "a"), ("UID", "x")))
    assert parse_dn("uid=x+cn=a,o=GermanGrid,c=DE") == parse_dn("/C=DE/O=GermanGrid/CN=a+UID=x")
    assert parse_dn("/C=DE/O=GermanGrid/CN=a/UID=x") != parse_dn("/C=DE/O=GermanGrid/CN=a+UID=x")
    # RFC 4514 escapes: an escaped comma or plus is part of the value; hex escapes are UTF-8.
    assert parse_dn(r"CN=Smith\, John+UID=j\+s,O=x").rdns[-1] == (("CN", "Smith, John"), ("UID", "j+s"))
    assert str(parse_dn(r"CN=Caf\C3\A9,O=x")) == "/O=x/CN=Caf\u00e9"
    # A "+" not followed by a known attribute stays in a one-line value.
    assert parse_dn("/O=x/CN=C++ builder").rdns[-1] == (("CN", "C++ builder"),)
    # The display form of a certificate name reads back to the same structure.
    name = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.USER_ID, "x")]),
                      x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "v")])])
    structure = dn_module.name_from_x509(name)
    assert parse_dn(str(structure)) == structure and dn_module.dn_from_x509_name(name) == "/CN=a+UID=x/1.2.3.4=v"
    assert hash(structure) == hash(parse_dn("/CN=a+UID=x/1.2.3.4=v")) and "DistinguishedName(" in repr(structure)
    with pytest.raises(AttributeError):
        structure.rdns = ()
    assert copy.deepcopy(structure) == structure


def test_state_refuses_rollback_and_same_version_other_bytes(tmp_path):
    store = ListStateStore(str(tmp_path))
    assert store.rollback_reason("cern", UUID, "5", "a" * 64) is None
    assert store.record("cern", UUID, "5", "a" * 64, "src")
    assert not store.record("cern", UUID, "5", "a" * 64, "src")
    assert "rollback" in store.rollback_reason("cern", UUID, "4", "b" * 64)
    assert "same version, different bytes" in store.rollback_reason("cern", UUID, "5", "b" * 64)
    assert store.rollback_reason("cern", UUID, "5", "a" * 64) is None
    assert store.rollback_reason("cern", UUID, "6", "c" * 64) is None
    assert sorted(os.listdir(str(tmp_path))) == ["cern"]
    assert sorted(os.listdir(str(tmp_path / "cern"))) == ["%s.json" % UUID]


def test_other_endorser_state_freeze_refused(tmp_path):
    """One endorser's record of a list UUID is no floor for another endorser's list with that UUID."""
    store = ListStateStore(str(tmp_path))
    assert store.record("attacker", UUID, "999999", "a" * 64, "src")
    assert store.rollback_reason("victim", UUID, "5", "b" * 64) is None
    assert store.get("victim", UUID) is None


def test_corrupt_state_file_is_an_error(tmp_path):
    (tmp_path / "cern").mkdir()
    (tmp_path / "cern" / ("%s.json" % UUID)).write_text("{not json")
    with pytest.raises(StateError, match="unreadable"):
        ListStateStore(str(tmp_path)).get("cern", UUID)


@pytest.mark.parametrize("endorser,identifier", [("cern", "../../etc/passwd"), ("..", UUID), ("a/b", UUID), ("", UUID)])
def test_state_path_traversal_refused(tmp_path, endorser, identifier):
    with pytest.raises(StateError):
        ListStateStore(str(tmp_path)).get(endorser, identifier)
