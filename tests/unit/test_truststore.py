"""Trust anchors and the endorser registry: only the configured anchors are trusted, and a
misconfiguration is an error at once, never a silent "everything refused" or "everything trusted"."""

import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import TrustError
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import Endorser, EndorserRegistry, TrustStore

ALICE = {"name": "alice", "dn": "/DC=org/DC=example/CN=Alice", "ca": "/DC=org/DC=example/CN=Example CA",
         "urls": ["https://repo.example.org/alice/image.list"]}
BOB = {"name": "bob", "dn": "CN=Bob,DC=example,DC=org", "ca": "CN=Example CA,DC=example,DC=org"}


# -- TrustStore --------------------------------------------------------------------------------

def test_ca_dir_mode_trusts_only_the_directory(pki):
    trust = TrustStore(ca_path=pki.ca_path)
    args = trust.openssl_args()
    assert args[:2] == ["-CApath", pki.ca_path]
    # OpenSSL's default bundle (the web PKI) must not sneak in as a trust anchor.
    assert "-no-CAfile" in args and "-no-CAstore" in args
    assert args[-1] == "-crl_check_all"
    assert "CA directory %s" % pki.ca_path in trust.describe()
    assert "CRL check on" in trust.describe()


def test_ca_file_mode_trusts_only_the_bundle(pki, tmp_path):
    bundle = pki.write_ca_file(str(tmp_path / "bundle.pem"), crls_of=pki.trusted)
    trust = TrustStore(ca_file=bundle)
    args = trust.openssl_args()
    assert args[:2] == ["-CAfile", bundle]
    assert "-no-CApath" in args and "-no-CAstore" in args and "-crl_check_all" in args


def test_ca_file_with_crl_file_joins_them_in_the_workdir(pki, tmp_path):
    trust = TrustStore(ca_file=pki.ca_file, crl_file=pki.crl_file)
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = trust.openssl_args(str(workdir))
    joined = args[args.index("-CAfile") + 1]
    assert os.path.dirname(joined) == str(workdir)
    data = open(joined, "rb").read()
    assert data.count(b"BEGIN CERTIFICATE") == 3 and data.count(b"BEGIN X509 CRL") == 3
    with pytest.raises(TrustError, match="work directory"):
        trust.openssl_args()


def test_ca_dir_with_crl_file_reads_crls_as_cafile(pki, tmp_path):
    directory = pki.write_ca_dir(str(tmp_path / "certs"), crls_of=())
    trust = TrustStore(ca_path=directory, crl_file=pki.crl_file)
    args = trust.openssl_args()
    assert args[:4] == ["-CApath", directory, "-CAfile", pki.crl_file]


def test_crl_check_off_leaves_out_crl_checking(pki):
    trust = TrustStore(ca_file=pki.ca_file, crl_check=False)
    assert "-crl_check_all" not in trust.openssl_args()
    assert "CRL check off" in trust.describe()


@pytest.mark.parametrize("kwargs", [{}, {"ca_path": "/x", "ca_file": "/y"}])
def test_exactly_one_kind_of_anchor(kwargs):
    with pytest.raises(TrustError, match="exactly one of ca_path"):
        TrustStore(**kwargs)


def test_missing_ca_dir_is_an_operator_error(tmp_path):
    with pytest.raises(TrustError, match="CA directory .*missing.*does not exist"):
        TrustStore(ca_path=str(tmp_path / "missing"))


def test_ca_dir_that_is_a_file_is_refused(pki):
    with pytest.raises(TrustError, match="not a directory"):
        TrustStore(ca_path=pki.ca_file)


def test_ca_dir_without_hashed_certificates_is_refused(tmp_path):
    (tmp_path / "someca.pem").write_text("x")
    with pytest.raises(TrustError, match=r"holds no <hash>\.0 certificate"):
        TrustStore(ca_path=str(tmp_path))


def test_missing_ca_file_is_an_operator_error(tmp_path):
    with pytest.raises(TrustError, match="CA bundle .*nope.pem: does not exist"):
        TrustStore(ca_file=str(tmp_path / "nope.pem"))


def test_ca_file_without_certificates_is_refused(tmp_path):
    path = tmp_path / "empty.pem"
    path.write_text("nothing here\n")
    with pytest.raises(TrustError, match="holds no PEM certificate"):
        TrustStore(ca_file=str(path), crl_check=False)


def test_crl_check_without_any_crl_is_refused_at_once(pki, tmp_path):
    # Otherwise every list would be refused later with "unable to get certificate CRL".
    with pytest.raises(TrustError, match="CRL checking is on but there is no CRL"):
        TrustStore(ca_file=pki.ca_file)
    directory = pki.write_ca_dir(str(tmp_path / "nocrls"), crls_of=())
    with pytest.raises(TrustError, match="fetch-crl"):
        TrustStore(ca_path=directory)
    assert TrustStore(ca_path=directory, crl_check=False).crl_check is False


def test_crl_file_without_crls_is_refused(pki):
    with pytest.raises(TrustError, match="CRL file .*holds no PEM CRL"):
        TrustStore(ca_file=pki.ca_file, crl_file=pki.ca_file)


def test_non_string_path_is_refused():
    with pytest.raises(TrustError, match="ca_path must be a non-empty path"):
        TrustStore(ca_path="")


# -- Endorser / EndorserRegistry ---------------------------------------------------------------

def test_registry_canonicalises_dns_and_matches_signer():
    registry = EndorserRegistry([ALICE, BOB])
    assert len(registry) == 2 and registry.names() == ["alice", "bob"]
    bob = registry.by_name("bob")
    assert bob.dn == "/DC=org/DC=example/CN=Bob"
    assert bob.ca == "/DC=org/DC=example/CN=Example CA"
    assert bob.urls == ()
    assert registry.match("/DC=org/DC=example/CN=Bob", "/DC=org/DC=example/CN=Example CA") == bob
    # Either DN form matches.
    assert registry.match("CN=Alice,DC=example,DC=org", "CN=Example CA, DC=example, DC=org").name == "alice"
    assert registry.by_name("alice").urls == ("https://repo.example.org/alice/image.list",)
    assert "alice" in registry and "carol" not in registry
    assert [e.name for e in registry] == ["alice", "bob"]
    assert registry.to_list()[0] == {"name": "alice", "dn": "/DC=org/DC=example/CN=Alice",
                                     "ca": "/DC=org/DC=example/CN=Example CA", "urls": list(ALICE["urls"]),
                                     "ca_fingerprint": None, "description": None}


def test_signer_with_right_dn_but_other_issuer_is_not_an_endorser():
    # Same subject name from another CA: a different identity.
    registry = EndorserRegistry([ALICE])
    assert registry.match("/DC=org/DC=example/CN=Alice", "/DC=org/DC=evil/CN=Evil CA") is None
    assert registry.match("/DC=org/DC=example/CN=Alice2", ALICE["ca"]) is None


def test_match_with_unparseable_dn_is_no_match():
    registry = EndorserRegistry([ALICE])
    assert registry.match("not a dn", ALICE["ca"]) is None
    assert registry.match(None, None) is None


def test_by_name_unknown_names_the_known_endorsers():
    registry = EndorserRegistry([ALICE])
    with pytest.raises(TrustError, match=r"endorser carol is not in the registry \(known: alice\)"):
        registry.by_name("carol")


def test_empty_registry_trusts_nobody():
    registry = EndorserRegistry([])
    assert len(registry) == 0
    assert registry.match(ALICE["dn"], ALICE["ca"]) is None
    assert len(EndorserRegistry(None)) == 0


def test_duplicate_name_is_refused():
    with pytest.raises(TrustError, match="name alice is used twice"):
        EndorserRegistry([ALICE, dict(BOB, name="alice")])


def test_duplicate_identity_is_refused_even_in_another_dn_form():
    twin = {"name": "alice2", "dn": "CN=Alice,DC=example,DC=org", "ca": ALICE["ca"]}
    with pytest.raises(TrustError, match="alice and alice2 have the same dn /DC=org/DC=example/CN=Alice"):
        EndorserRegistry([ALICE, twin])


def test_catalogue_claimed_by_two_endorsers_is_refused():
    with pytest.raises(TrustError, match="catalogue https://repo.example.org/alice/image.list is listed for both alice and bob"):
        EndorserRegistry([ALICE, dict(BOB, urls=list(ALICE["urls"]))])


@pytest.mark.parametrize("entries, message", [
    ("alice", "endorsers: must be a list"),
    ([["alice"]], "endorser 1: must be a mapping"),
    ([{"name": "alice", "dn": ALICE["dn"]}], "endorser 1: ca is missing"),
    ([dict(ALICE, dn=5)], "endorser 1: dn must be a string"),
    ([dict(ALICE, name="")], "endorser 1: name '' must be"),
    ([dict(ALICE, name="../etc")], "endorser 1: name '../etc' must be"),
    ([dict(ALICE, name="a" * 129)], "endorser 1: name 'a{129}' must be 1 to 128 characters"),
    ([dict(ALICE, url="https://x")], "endorser 1: unknown keys url"),
    ([dict(ALICE, urls="https://x")], "endorser alice: urls must be a list"),
    ([dict(ALICE, urls=["not a url"])], "endorser alice: url 'not a url' is not an absolute URL"),
    ([dict(ALICE, urls=[7])], "endorser alice: url 7 is not a string"),
    ([dict(ALICE, urls=["https://a/x", "https://a/x"])], "endorser alice: urls lists the same URL twice"),
    ([dict(ALICE, dn="/DC=org/XYZ=1")], "endorser alice: .*unknown attribute"),
    ([dict(ALICE, ca="   ")], "endorser alice: distinguished name is empty"),
])
def test_malformed_registry_entries_are_refused_with_a_named_reason(entries, message):
    with pytest.raises(TrustError, match=message):
        EndorserRegistry(entries)


def test_registry_size_is_limited():
    entries = [{"name": "e%d" % i, "dn": "/CN=e%d" % i, "ca": "/CN=ca"} for i in range(1001)]
    with pytest.raises(TrustError, match="more than the limit of 1000"):
        EndorserRegistry(entries)


def test_endorser_equality_and_dict():
    one = Endorser("alice", "CN=Alice,DC=example,DC=org", ALICE["ca"], ["https://x/l"])
    two = Endorser("alice", ALICE["dn"], "CN=Example CA,DC=example,DC=org", ("https://x/l",))
    assert one == two and hash(one) == hash(two)
    assert one.to_dict()["urls"] == ["https://x/l"]


def test_openssl_verify_args_trust_only_the_store_and_its_crls(pki, tmp_path):
    directory = pki.write_ca_dir(str(tmp_path / "certs"), crls_of=())
    args = TrustStore(ca_path=directory, crl_file=pki.crl_file).openssl_verify_args()
    assert args == ["-CApath", directory, "-no-CAfile", "-no-CAstore", "-CRLfile", pki.crl_file, "-crl_check_all"]
    args = TrustStore(ca_file=pki.ca_file, crl_check=False).openssl_verify_args()
    assert args == ["-CAfile", pki.ca_file, "-no-CApath", "-no-CAstore"]


def test_anchor_certificates_are_read_once_with_fingerprints(pki):
    import hashlib  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    trust = TrustStore(ca_path=pki.ca_path)
    anchors = trust.anchor_certificates()
    assert anchors is trust.anchor_certificates()
    root = [a for a in anchors if a.hash == pki.root.hash]
    assert len(root) == 1 and root[0].pem == pki.root.cert_pem and str(root[0].name) == pki.root.dn
    assert root[0].fingerprint == hashlib.sha256(pki.root.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert trust.anchors_named("CN=VMIC Test Root CA,O=VMIC Test,DC=vmic-test,DC=org") == root
    assert trust.anchor_with_fingerprint(root[0].fingerprint.upper()) is root[0]
    bundle = TrustStore(ca_file=pki.ca_file, crl_check=False)
    assert sorted(a.fingerprint for a in bundle.anchor_certificates()) == sorted(a.fingerprint for a in anchors)


def test_endorser_ca_fingerprint_and_description():
    registry = EndorserRegistry([dict(ALICE, ca_fingerprint="AB:" * 31 + "AB", description="Alice's images")])
    alice = registry.by_name("alice")
    assert alice.ca_fingerprint == "ab" * 32 and alice.description == "Alice's images"
    assert str(alice.dn_name) == alice.dn and str(alice.ca_name) == alice.ca
    with pytest.raises(TrustError, match="endorser alice: description must be a string"):
        EndorserRegistry([dict(ALICE, description=["x"])])


def test_endorser_directory_name_with_trailing_newline_refused():
    """An endorser name names a directory of the list-state store: a regex ``$`` that allows a final newline must not let one in."""
    with pytest.raises(TrustError, match="must be 1 to 128 characters"):
        EndorserRegistry([dict(ALICE, name="alice\n")])
