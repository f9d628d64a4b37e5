"""Detached S/MIME signatures: each test is named after the attack or failure it stops.

Verification runs the real openssl command against the test PKI (tests/unit/pki.py); interoperability
is checked both ways with ``openssl smime -sign`` / ``openssl smime -verify``.
"""

import base64
import json
import os
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from ansible_collections.vmic.fleet.plugins.module_utils import smime
from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, SignatureError, TrustError
from ansible_collections.vmic.fleet.plugins.module_utils.smime import check_signing_certificate, sign_detached, smime_canonical, verify_detached
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import TrustStore

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "hepix")
CONTENT = json.dumps({"hv:imagelist": {"dc:identifier": "4e186b44-2c64-40ea-97d5-e9e5c0bce059", "hv:version": "1",
                                       "dc:title": "t\u00e9st"}}, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
SOURCE = "https://repo.example.org/list"


@pytest.fixture(scope="module")
def trust(pki):
    return TrustStore(ca_path=pki.ca_path)


@pytest.fixture(scope="module")
def trust_file(pki):
    return TrustStore(ca_file=pki.ca_file, crl_file=pki.crl_file)


def sign(identity, content=CONTENT, digest="sha256", chain=True, check=True):
    return sign_detached(content, identity.cert_pem, identity.key_pem, digest=digest,
                         chain_pems=identity.chain_pems if chain else (), check=check)


def reasons_text(verdict):
    return " | ".join(verdict.reasons)


def assert_refused(verdict, *fragments):
    assert verdict.valid is False
    assert verdict.content is None
    assert verdict.reasons, "a refusal must carry a reason"
    for reason in verdict.reasons:
        assert reason.startswith("image list %s: " % SOURCE), reason
    for fragment in fragments:
        assert fragment in reasons_text(verdict), (fragment, verdict.reasons)


def split_envelope(envelope):
    """(head, base64 signature, tail) of a multipart/signed envelope."""
    boundary = re.search(rb'boundary="?([^";\r\n]+)"?', envelope).group(1)
    delimiter = b"--" + boundary
    second = envelope.index(delimiter, envelope.index(delimiter) + 1)
    match = re.compile(rb"\r?\n\r?\n").search(envelope, second)
    end = envelope.rindex(delimiter + b"--")
    body = envelope[match.end():end]
    stripped = body.rstrip(b"\r\n")
    return envelope[:match.end()], stripped, body[len(stripped):] + envelope[end:]


def wrap_base64(der, eol=b"\r\n"):
    text = base64.b64encode(der)
    return eol.join(text[i:i + 64] for i in range(0, len(text), 64))


def openssl_sign(identity, content_path, md, tmp_path, chain=False):
    out = tmp_path / ("signed-%s.smime" % md)
    args = ["openssl", "smime", "-sign", "-md", md, "-in", str(content_path), "-signer", identity.cert_path,
            "-inkey", identity.key_path, "-out", str(out)]
    if chain:
        args += ["-certfile", identity.chain_path]
    subprocess.run(args, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return out.read_bytes()


def to_crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- round trips -------------------------------------------------------------------------------

def test_round_trip_sign_verify_is_valid(pki, trust):
    verdict = verify_detached(sign(pki.good), trust, SOURCE)
    assert verdict.valid, verdict.reasons
    assert verdict.reasons == []
    assert verdict.content == smime_canonical(CONTENT)
    assert json.loads(verdict.content) == json.loads(CONTENT)
    assert verdict.signer_dn == pki.good.dn == "/DC=org/DC=vmic-test/O=VMIC Test/CN=Endorser good"
    assert verdict.issuer_dn == pki.root.dn
    assert verdict.digest == "sha256"
    assert verdict.signer_count == 1
    assert verdict.signer_cert_pem == pki.good.cert_pem
    assert verdict.to_dict()["valid"] is True


@pytest.mark.parametrize("content", [
    b'{"hv:imagelist":{"hv:version":"1"}}',
    b'{\r\n  "hv:imagelist": {}\r\n}\r\n',
    b"",
    b"\r\n\r\nleading blank lines and trailing spaces   \r\n",
    b"x" * 5000 + b"\r\n" + b"y" * 3000,
])
def test_canonical_content_comes_back_byte_for_byte(pki, trust, content):
    verdict = verify_detached(sign(pki.good, content), trust, SOURCE)
    assert verdict.valid, verdict.reasons
    assert verdict.content == content


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_round_trip_every_signing_digest_rsa_and_ec(pki, trust, digest):
    for identity in (pki.good, pki.rsa):
        verdict = verify_detached(sign(identity, digest=digest), trust, SOURCE)
        assert verdict.valid, verdict.reasons
        assert verdict.digest == digest


def test_round_trip_with_ca_bundle_and_crl_file(pki, trust_file):
    verdict = verify_detached(sign(pki.good), trust_file, SOURCE)
    assert verdict.valid, verdict.reasons


def test_lf_copy_of_our_envelope_still_verifies(pki, trust):
    envelope = sign(pki.good).replace(b"\r\n", b"\n")
    verdict = verify_detached(envelope, trust, SOURCE)
    assert verdict.valid, verdict.reasons
    assert verdict.content == smime_canonical(CONTENT)


def test_folded_lower_case_content_type_header_verifies(pki, trust):
    envelope = sign(pki.good).replace(b"; protocol=", b";\r\n\tprotocol=").replace(b"Content-Type: multipart", b"content-type: Multipart", 1)
    verdict = verify_detached(envelope, trust, SOURCE)
    assert verdict.valid, verdict.reasons


def test_smime_canonical_refuses_bare_carriage_return():
    assert smime_canonical(b"a\nb\r\nc") == b"a\r\nb\r\nc"
    with pytest.raises(SignatureError, match="carriage return"):
        smime_canonical(b"a\rb")
    with pytest.raises(SignatureError, match="must be bytes"):
        smime_canonical("text")


# -- the chain ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ca_path", "ca_file"])
def test_chain_via_intermediate_verifies(pki, trust, trust_file, mode):
    verdict = verify_detached(sign(pki.via_intermediate), trust if mode == "ca_path" else trust_file, SOURCE)
    assert verdict.valid, verdict.reasons
    assert verdict.issuer_dn == pki.intermediate.dn


def test_intermediate_found_in_ca_dir_when_not_in_envelope(pki, trust):
    verdict = verify_detached(sign(pki.via_intermediate, chain=False), trust, SOURCE)
    assert verdict.valid, verdict.reasons


def test_intermediate_in_envelope_does_not_make_it_a_trust_anchor(pki, tmp_path):
    # Only the root is missing from the anchors: the chain the envelope carries is not enough.
    bundle = pki.write_ca_file(str(tmp_path / "only-other.pem"), cas=[pki.other_ca], crls_of=[pki.other_ca])
    verdict = verify_detached(sign(pki.via_intermediate), TrustStore(ca_file=bundle), SOURCE)
    assert_refused(verdict, "untrusted CA")


def test_untrusted_ca_refused(pki, trust):
    verdict = verify_detached(sign(pki.rogue), trust, SOURCE)
    assert_refused(verdict, "signer %s: unable to get local issuer certificate (untrusted CA)" % pki.rogue.dn)
    # The claimed signer is reported for messages, but nothing is returned as content.
    assert verdict.signer_dn == pki.rogue.dn


def test_self_signed_signer_refused(pki, trust):
    verdict = verify_detached(sign(pki.self_signed), trust, SOURCE)
    assert_refused(verdict, "self-signed certificate", "not issued by a trusted CA")


def test_system_trust_store_is_never_used(pki, trust, tmp_path, monkeypatch):
    # A CA in OpenSSL's default locations (the web PKI bundle) or given through SSL_CERT_FILE /
    # SSL_CERT_DIR must not be trusted: only the configured anchors are.
    rogue_bundle = pki.write_ca_file(str(tmp_path / "rogue.pem"), cas=[pki.rogue_ca], crls_of=[pki.rogue_ca])
    rogue_dir = pki.write_ca_dir(str(tmp_path / "rogue-dir"), cas=[pki.rogue_ca])
    monkeypatch.setenv("SSL_CERT_FILE", rogue_bundle)
    monkeypatch.setenv("SSL_CERT_DIR", rogue_dir)
    for store in (trust, TrustStore(ca_file=pki.ca_file, crl_file=pki.crl_file)):
        assert_refused(verify_detached(sign(pki.rogue), store, SOURCE), "untrusted CA")


def test_revoked_signer_refused(pki, trust, trust_file):
    for store in (trust, trust_file):
        verdict = verify_detached(sign(pki.revoked, check=False), store, SOURCE)
        assert_refused(verdict, "signer %s: certificate revoked" % pki.revoked.dn)


def test_revoked_signer_passes_only_when_crl_check_is_off(pki):
    verdict = verify_detached(sign(pki.revoked, check=False), TrustStore(ca_path=pki.ca_path, crl_check=False), SOURCE)
    assert verdict.valid, verdict.reasons


def test_expired_signer_refused(pki, trust):
    verdict = verify_detached(sign(pki.expired, check=False), trust, SOURCE)
    assert_refused(verdict, "signer %s: certificate has expired (signer certificate valid" % pki.expired.dn)


def test_expired_signer_verifies_at_a_time_it_was_valid(pki, trust):
    envelope = sign(pki.expired, check=False)
    verdict = verify_detached(envelope, trust, SOURCE, at_time=pki.at(-10))
    assert verdict.valid, verdict.reasons
    epoch = int(pki.at(-10).timestamp())
    assert verify_detached(envelope, trust, SOURCE, at_time=epoch).valid


def test_good_signer_refused_at_a_time_before_it_was_issued(pki, trust):
    verdict = verify_detached(sign(pki.good), trust, SOURCE, at_time=pki.at(-45))
    assert_refused(verdict, "certificate is not yet valid")


def test_not_yet_valid_signer_refused(pki, trust):
    verdict = verify_detached(sign(pki.not_yet_valid, check=False), trust, SOURCE)
    assert_refused(verdict, "signer %s: certificate is not yet valid" % pki.not_yet_valid.dn)


def test_missing_crl_refused_with_crl_check(pki, tmp_path):
    # The intermediate CA's CRL is missing: its certificates cannot be checked for revocation.
    directory = pki.write_ca_dir(str(tmp_path / "certs"), crls_of=[pki.root, pki.other_ca])
    verdict = verify_detached(sign(pki.via_intermediate), TrustStore(ca_path=directory), SOURCE)
    assert_refused(verdict, "unable to get certificate CRL", "fetch-crl")
    # The root's CRL is there, so a signer under the root is fine...
    assert verify_detached(sign(pki.good), TrustStore(ca_path=directory), SOURCE).valid
    # ...and without CRL checking the intermediate's signer is too.
    assert verify_detached(sign(pki.via_intermediate), TrustStore(ca_path=directory, crl_check=False), SOURCE).valid


def test_missing_root_crl_refused_with_crl_check_all(pki, tmp_path):
    # -crl_check_all: every CA of the chain needs its CRL, the root's too.
    directory = pki.write_ca_dir(str(tmp_path / "certs"), crls_of=[pki.intermediate])
    verdict = verify_detached(sign(pki.via_intermediate), TrustStore(ca_path=directory), SOURCE)
    assert_refused(verdict, "unable to get certificate CRL")


def test_outdated_crl_refused(pki, trust):
    # Verifying "as of" a time after the CRLs' nextUpdate is what a host sees when fetch-crl stopped.
    verdict = verify_detached(sign(pki.good), trust, SOURCE, at_time=pki.at(90))
    assert_refused(verdict, "CRL has expired", "run fetch-crl")


# -- key usage ---------------------------------------------------------------------------------

def test_wrong_key_usage_refused_at_sign_time(pki):
    assert check_signing_certificate(pki.no_digital_signature.cert_pem) == ["key usage lacks digitalSignature"]
    with pytest.raises(SignatureError, match="signing certificate .*no_digital_signature: key usage lacks digitalSignature"):
        sign(pki.no_digital_signature)


def test_wrong_key_usage_refused_at_verify_time(pki, trust):
    # openssl's S/MIME signing purpose, as `openssl smime -verify` and the HEPiX readers check it.
    verdict = verify_detached(sign(pki.no_digital_signature, check=False), trust, SOURCE)
    assert_refused(verdict, "certificate purpose", "key usage lacks digitalSignature")
    assert verify_detached(sign(pki.no_digital_signature, check=False), trust, SOURCE, purpose="any").valid


def test_certificate_without_smime_usage_refused_unless_purpose_any(pki, trust):
    assert "emailProtection" in check_signing_certificate(pki.server_only.cert_pem)[0]
    envelope = sign(pki.server_only, check=False)
    assert_refused(verify_detached(envelope, trust, SOURCE), "certificate purpose")
    assert verify_detached(envelope, trust, SOURCE, purpose="any").valid


def test_unknown_purpose_is_an_operator_error(pki, trust):
    with pytest.raises(SignatureError, match="purpose must be one of"):
        verify_detached(sign(pki.good), trust, SOURCE, purpose="sslserver")


# -- check_signing_certificate / sign_detached -------------------------------------------------

def test_good_signing_certificate_has_no_objection(pki):
    assert check_signing_certificate(pki.good.cert_pem, pki.good.key_pem) == []
    assert check_signing_certificate(pki.rsa.cert_pem, pki.rsa.key_pem.decode()) == []


def test_signing_with_expired_or_future_certificate_refused(pki):
    assert check_signing_certificate(pki.expired.cert_pem)[0].startswith("expired on ")
    assert check_signing_certificate(pki.not_yet_valid.cert_pem)[0].startswith("not valid before ")
    assert check_signing_certificate(pki.expired.cert_pem, at_time=pki.at(-10)) == []
    with pytest.raises(SignatureError, match="expired on"):
        sign(pki.expired)


def test_signing_with_someone_elses_key_refused(pki):
    assert check_signing_certificate(pki.good.cert_pem, pki.rsa.key_pem) == ["the private key does not belong to the certificate"]
    with pytest.raises(SignatureError, match="does not belong"):
        sign_detached(CONTENT, pki.good.cert_pem, pki.rsa.key_pem)


@pytest.mark.parametrize("digest", ["sha1", "md5", "SHA256", "sha224"])
def test_signing_with_legacy_or_unknown_digest_refused(pki, digest):
    with pytest.raises(SignatureError, match="is not allowed for signing"):
        sign(pki.good, digest=digest)


def test_signing_with_garbage_pem_is_an_operator_error(pki):
    with pytest.raises(SignatureError, match="signing certificate: not a PEM certificate"):
        sign_detached(CONTENT, b"garbage", pki.good.key_pem)
    with pytest.raises(SignatureError, match="signing key: cannot be loaded"):
        sign_detached(CONTENT, pki.good.cert_pem, b"garbage")
    with pytest.raises(SignatureError, match="signing key: cannot be loaded"):
        check_signing_certificate(pki.good.cert_pem, b"garbage")


def test_signed_output_is_multipart_signed_without_added_headers(pki):
    envelope = sign(pki.good, b'{"a":1}')
    assert b"Content-Type: multipart/signed" in envelope
    assert b'micalg="sha-256"' in envelope
    assert b"text/plain" not in envelope
    head, signature, _tail = split_envelope(envelope)
    assert base64.b64decode(signature)


# -- envelope structure attacks ----------------------------------------------------------------

def test_tampered_payload_refused(pki, trust):
    envelope = sign(pki.good)
    tampered = envelope.replace(b'"hv:version": "1"', b'"hv:version": "9"')
    assert tampered != envelope
    verdict = verify_detached(tampered, trust, SOURCE)
    assert_refused(verdict, "signature does not match the content (digest failure)")
    assert len(verdict.reasons) == 1


def test_tampered_payload_from_untrusted_signer_reports_both(pki, trust):
    tampered = sign(pki.rogue).replace(b'"hv:version": "1"', b'"hv:version": "9"')
    verdict = verify_detached(tampered, trust, SOURCE)
    assert_refused(verdict, "untrusted CA", "digest failure")


def test_corrupted_signature_value_refused(pki, trust):
    head, signature, tail = split_envelope(sign(pki.rsa))
    der = bytearray(base64.b64decode(signature))
    der[-1] ^= 0x01  # the last byte of the RSA signature value
    verdict = verify_detached(head + wrap_base64(bytes(der)) + tail, trust, SOURCE)
    assert_refused(verdict, "signature value is invalid (signature failure)")


def test_two_signers_refused(pki, trust):
    builder = (pkcs7.PKCS7SignatureBuilder().set_data(smime_canonical(CONTENT))
               .add_signer(pki.good.cert, pki.good.key, hashes.SHA256())
               .add_signer(pki.other.cert, pki.other.key, hashes.SHA256()))
    envelope = builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    verdict = verify_detached(envelope, trust, SOURCE)
    assert_refused(verdict, "2 signers; exactly one signer is required")
    assert verdict.signer_count == 2


def test_no_signer_refused(pki, trust, tmp_path):
    # A certs-only (degenerate) PKCS#7 in the signature part: it "carries" a trusted certificate
    # but nobody signed anything.
    der = subprocess.run(["openssl", "crl2pkcs7", "-nocrl", "-certfile", pki.good.cert_path, "-outform", "DER"],
                         check=True, stdout=subprocess.PIPE).stdout
    head, _signature, tail = split_envelope(sign(pki.good))
    verdict = verify_detached(head + wrap_base64(der) + tail, trust, SOURCE)
    assert_refused(verdict, "no signer")
    assert verdict.signer_count == 0


def test_unsigned_json_refused(trust):
    with open(os.path.join(FIXTURES, "hepixvmitrust_imagelist_unsigned.json"), "rb") as handle:
        data = handle.read()
    assert_refused(verify_detached(data, trust, SOURCE), "not an S/MIME signed message (unsigned?)")
    assert_refused(verify_detached(CONTENT, trust, SOURCE), "not an S/MIME signed message (unsigned?)")
    assert_refused(verify_detached(b"", trust, SOURCE), "not an S/MIME signed message (unsigned?)")
    assert_refused(verify_detached(b'{"hv:imagelist": {}}', trust, SOURCE), "not an S/MIME signed message (unsigned?)")


def test_opaque_signed_message_is_not_a_detached_list(pki, trust, tmp_path):
    content = tmp_path / "c.json"
    content.write_bytes(CONTENT)
    out = tmp_path / "opaque.smime"
    subprocess.run(["openssl", "smime", "-sign", "-nodetach", "-in", str(content), "-signer", pki.good.cert_path,
                    "-inkey", pki.good.key_path, "-out", str(out)], check=True)
    verdict = verify_detached(out.read_bytes(), trust, SOURCE)
    assert_refused(verdict, "not an S/MIME signed message (unsigned?): Content-Type is application/x-pkcs7-mime")


def test_oversized_envelope_refused_before_parsing(pki, trust, monkeypatch):
    envelope = sign(pki.good)

    def no_openssl(*_args, **_kwargs):
        raise AssertionError("openssl must not run on an oversized envelope")

    monkeypatch.setattr(smime.subprocess, "run", no_openssl)
    verdict = verify_detached(envelope, trust, SOURCE, max_bytes=len(envelope) - 1)
    assert_refused(verdict, "%d bytes, larger than the limit of %d bytes" % (len(envelope), len(envelope) - 1))


def test_envelope_at_the_size_limit_is_accepted(pki, trust):
    envelope = sign(pki.good)
    assert verify_detached(envelope, trust, SOURCE, max_bytes=len(envelope)).valid


def test_garbage_base64_signature_refused(pki, trust):
    head, _signature, tail = split_envelope(sign(pki.good))
    verdict = verify_detached(head + b"!!!! this is @@ not base64 ****\r\n" + tail, trust, SOURCE)
    assert_refused(verdict, "malformed S/MIME envelope")


def test_random_der_in_signature_refused(pki, trust):
    head, _signature, tail = split_envelope(sign(pki.good))
    verdict = verify_detached(head + wrap_base64(os.urandom(300)) + tail, trust, SOURCE)
    assert_refused(verdict, "malformed S/MIME envelope")


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8, 0.95])
def test_truncated_envelope_refused(pki, trust, keep):
    envelope = sign(pki.good)
    verdict = verify_detached(envelope[:int(len(envelope) * keep)], trust, SOURCE)
    assert_refused(verdict)
    assert "malformed S/MIME envelope" in reasons_text(verdict) or "digest failure" in reasons_text(verdict)


def test_envelope_must_be_bytes(trust):
    with pytest.raises(SignatureError, match="must be bytes"):
        verify_detached("text", trust, SOURCE)


def test_missing_openssl_is_an_operator_error(pki, trust, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="openssl command"):
        verify_detached(sign(pki.good), trust, SOURCE)


def test_trust_anchors_removed_after_construction_is_an_operator_error(pki, tmp_path):
    bundle = pki.write_ca_file(str(tmp_path / "b.pem"), crls_of=pki.trusted)
    store = TrustStore(ca_file=bundle)
    os.unlink(bundle)
    with pytest.raises(TrustError, match="cannot load the trust anchors"):
        verify_detached(sign(pki.good), store, SOURCE)


def test_reasons_name_the_object_with_what(pki, trust):
    verdict = verify_detached(b"{}", trust, "https://x/endorsers", what="endorser list")
    assert verdict.reasons == ["endorser list https://x/endorsers: not an S/MIME signed message (unsigned?)"]


# -- parser robustness -------------------------------------------------------------------------

# As openssl prints it, trailing spaces included.
PRINTED_ONE = "\n".join([
    "CMS_ContentInfo: ",
    "  contentType: pkcs7-signedData (1.2.840.113549.1.7.2)",
    "  d.signedData: ",
    "    version: 1",
    "    certificates:",
    "      d.certificate: ",
    "    signerInfos:",
    "        version: 1",
    "        d.issuerAndSerialNumber: ",
    "          issuer: DC=org, CN=CA",
    "          serialNumber: 0x1F",
    "        digestAlgorithm: ",
    "          algorithm: sha1 (1.3.14.3.2.26)",
    "          parameter: NULL",
    "        signedAttrs:",
    "",
])


def test_signer_info_parser_reads_digest_and_serial():
    signers = smime._parse_signer_infos(PRINTED_ONE)
    assert signers == [{"digest_oid": "1.3.14.3.2.26", "digest_name": "sha1", "serial": 31}]


@pytest.mark.parametrize("injected", [
    # text from an unsigned part of the envelope that imitates structure must not change the digest
    "          parameter: NULL\n    signerInfos:\n        version: 1\n        digestAlgorithm: \n"
    "          algorithm: sha256 (2.16.840.1.101.3.4.2.1)\n",
    "        digestAlgorithm: \n          algorithm: sha256 (2.16.840.1.101.3.4.2.1)\n",
])
def test_signer_info_parser_refuses_injected_structure(injected):
    with pytest.raises(ValueError, match="ambiguous"):
        smime._parse_signer_infos(PRINTED_ONE + injected)


def test_signer_info_parser_counts_injected_signer_as_second_signer():
    fake = "        version: 1\n        digestAlgorithm: \n          algorithm: sha256 (2.16.840.1.101.3.4.2.1)\n"
    assert len(smime._parse_signer_infos(PRINTED_ONE + fake)) == 2


def test_signer_info_parser_refuses_non_signed_data():
    with pytest.raises(ValueError, match="not CMS signed data"):
        smime._parse_signer_infos(PRINTED_ONE.replace("pkcs7-signedData (1.2.840.113549.1.7.2)", "pkcs7-data (1.2.840.113549.1.7.1)"))


# -- interoperability --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["good", "via_intermediate", "rsa"])
def test_our_envelope_passes_openssl_smime_verify(pki, tmp_path, name):
    identity = getattr(pki, name)
    envelope = tmp_path / "list.smime"
    envelope.write_bytes(sign(identity, digest="sha512"))
    bundle = pki.write_ca_file(str(tmp_path / "bundle.pem"), crls_of=pki.trusted)
    out = tmp_path / "out"
    result = subprocess.run(["openssl", "smime", "-verify", "-in", str(envelope), "-CAfile", bundle, "-no-CApath", "-no-CAstore",
                             "-crl_check_all", "-out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert result.returncode == 0, result.stderr
    assert b"Verification successful" in result.stderr
    assert out.read_bytes() == smime_canonical(CONTENT)


def test_tampered_envelope_fails_openssl_smime_verify_too(pki, tmp_path):
    envelope = tmp_path / "list.smime"
    envelope.write_bytes(sign(pki.good).replace(b'"hv:version": "1"', b'"hv:version": "2"'))
    result = subprocess.run(["openssl", "smime", "-verify", "-in", str(envelope), "-CAfile", pki.ca_file, "-no-CApath",
                             "-no-CAstore", "-out", os.devnull], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert result.returncode != 0


@pytest.mark.parametrize("md", ["sha256", "sha512"])
@pytest.mark.parametrize("eol", ["lf", "crlf"])
def test_openssl_smime_signed_lists_verify(pki, trust, trust_file, tmp_path, md, eol):
    content = tmp_path / "list.json"
    content.write_bytes(CONTENT)
    envelope = openssl_sign(pki.via_intermediate, content, md, tmp_path, chain=True)
    assert b"\r\n" not in envelope.split(b"\n\n", 1)[0]  # openssl writes LF headers
    if eol == "crlf":
        envelope = to_crlf(envelope)
    for store in (trust, trust_file):
        verdict = verify_detached(envelope, store, SOURCE)
        assert verdict.valid, verdict.reasons
        assert verdict.digest == md
        assert verdict.content == smime_canonical(CONTENT)
        assert verdict.signer_dn == pki.via_intermediate.dn


@pytest.mark.parametrize("eol", ["lf", "crlf"])
@pytest.mark.parametrize("md, identity", [("sha1", "good"), ("md5", "rsa")])
def test_legacy_digest_refused_unless_allowed(pki, trust, tmp_path, eol, md, identity):
    content = tmp_path / "list.json"
    content.write_bytes(CONTENT)
    envelope = openssl_sign(getattr(pki, identity), content, md, tmp_path)
    if eol == "crlf":
        envelope = to_crlf(envelope)
    verdict = verify_detached(envelope, trust, SOURCE)
    assert_refused(verdict, "signed with %s, a legacy digest; allow_legacy_digests permits it" % md)
    assert len(verdict.reasons) == 1
    assert verdict.digest == md
    allowed = verify_detached(envelope, trust, SOURCE, allow_legacy_digests=True)
    assert allowed.valid, allowed.reasons
    assert allowed.content == smime_canonical(CONTENT)


# -- public HEPiX fixtures (verdicts from tests/fixtures/hepix/README.md) ----------------------

def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as handle:
        return handle.read()


def test_hepix_book_example_with_edited_content_refused(trust):
    envelope = fixture("hepix_book_signed_example_baddigest.smime")
    verdict = verify_detached(envelope, trust, SOURCE)
    assert_refused(verdict, "signature does not match the content (digest failure)", "untrusted CA",
                   "signed with sha1, a legacy digest")
    assert verdict.digest == "sha1"
    assert verdict.signer_dn == "/C=DE/O=GermanGrid/OU=DESY/CN=Owen Synge"
    assert verdict.issuer_dn == "/C=DE/O=GermanGrid/CN=GridKa-CA"
    # Allowing legacy digests does not make an edited list acceptable.
    lenient = verify_detached(envelope, TrustStore(ca_path=trust.ca_path, crl_check=False), SOURCE, allow_legacy_digests=True)
    assert_refused(lenient, "signature does not match the content (digest failure)")


def test_cloudkeeper_invalid_list_refused_for_signature_and_signer(trust):
    verdict = verify_detached(fixture("cloudkeeper_imagelist_invalid.signed"), trust, SOURCE)
    assert_refused(verdict, "signature does not match the content (digest failure)", "self-signed certificate")
    assert verdict.digest == "sha256"
    assert verdict.signer_dn == "/C=NA/ST=Narnia/L=Aver/O=TEST/OU=TEST/CN=TEST"


def test_unsigned_hepix_list_refused(trust):
    verdict = verify_detached(fixture("hepixvmitrust_imagelist_unsigned.json"), trust, SOURCE)
    assert verdict.reasons == ["image list %s: not an S/MIME signed message (unsigned?)" % SOURCE]
