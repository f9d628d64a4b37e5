"""The verification pipeline, attack by attack.

Every case feeds one bad input to ``verify_image_list`` and checks three things: the list is refused
(a verdict, never an exception), the reason names what is wrong, and the stored state did not change.
"""

import base64
import copy
import json
import os
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from ansible_collections.vmic.fleet.plugins.module_utils import imagelist as il
from ansible_collections.vmic.fleet.plugins.module_utils.listverify import verify_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore
from ansible_collections.vmic.fleet.plugins.module_utils.smime import sign_detached, smime_canonical
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore

LIST_ID = "5a0c0d1e-7b8f-4c2a-9d3e-1f2a3b4c5d6e"
IMAGE_ID = "6b1d1e2f-8c9a-4d3b-8e4f-2a3b4c5d6e7f"
SOURCE = "https://repo.test/lists/site.list"
NOW = time.time()


def document(identity, version="5", **changes):
    body = {
        "dc:identifier": LIST_ID,
        "dc:title": "Site list",
        "dc:date:created": il.format_date(NOW - 3600),
        "dc:date:expires": il.format_date(NOW + 30 * 86400),
        "hv:version": version,
        "hv:uri": SOURCE,
        "hv:endorser": {"hv:x509": {"hv:dn": identity.dn, "hv:ca": identity.issuer_dn, "dc:creator": "E"}},
        "hv:images": [{"hv:image": {
            "dc:identifier": IMAGE_ID, "dc:title": "Debian", "hv:uri": "https://repo.test/images/debian.img",
            "sl:checksum:sha512": "b" * 128, "hv:size": 1024, "hv:version": "1", "sl:arch": "x86_64"}}],
    }
    body.update(changes)
    return {"hv:imagelist": body}


def encode(doc):
    return json.dumps(doc, indent=1).encode()


def sign(identity, content, check=True, digest="sha256"):
    return sign_detached(content, identity.cert_pem, identity.key_pem, digest=digest, chain_pems=identity.chain_pems, check=check)


def registry_for(pki, urls=()):
    return EndorserRegistry([
        {"name": "good", "dn": pki.good.dn, "ca": pki.good.issuer_dn, "urls": list(urls)},
        {"name": "mid", "dn": pki.via_intermediate.dn, "ca": pki.via_intermediate.issuer_dn},
        {"name": "rsa", "dn": pki.rsa.dn, "ca": pki.rsa.issuer_dn},
        {"name": "expired", "dn": pki.expired.dn, "ca": pki.expired.issuer_dn},
        {"name": "future", "dn": pki.not_yet_valid.dn, "ca": pki.not_yet_valid.issuer_dn},
        {"name": "revoked", "dn": pki.revoked.dn, "ca": pki.revoked.issuer_dn},
        {"name": "nods", "dn": pki.no_digital_signature.dn, "ca": pki.no_digital_signature.issuer_dn},
        {"name": "selfie", "dn": pki.self_signed.dn, "ca": pki.self_signed.issuer_dn},
        {"name": "rogue", "dn": pki.rogue.dn, "ca": pki.rogue.issuer_dn},
    ])


@pytest.fixture()
def env(pki, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    return {
        "pki": pki,
        "trust": TrustStore(ca_path=pki.ca_path),
        "registry": registry_for(pki),
        "state": ListStateStore(str(state_dir)),
        "state_dir": state_dir,
        "tmp": tmp_path,
    }


def snapshot(path):
    """Every file under ``path`` (the state is kept per endorser directory) with its bytes."""
    files = {}
    for directory, _dirs, names in os.walk(str(path)):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, "rb") as handle:
                files[os.path.relpath(full, str(path))] = handle.read()
    return files


def run(env, envelope, **kwargs):
    kwargs.setdefault("expected_identifier", LIST_ID)
    return verify_image_list(envelope, SOURCE, env["trust"], kwargs.pop("registry", env["registry"]), state=env["state"],
                             now=kwargs.pop("now", NOW), **kwargs)


def accept_version_5(env):
    verdict = run(env, sign(env["pki"].good, encode(document(env["pki"].good))))
    assert verdict.valid, verdict.reasons
    return verdict


def split_signature(envelope):
    """(head, base64 signature, tail) of a multipart/signed envelope."""
    boundary = envelope.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    delimiter = b"--" + boundary
    second = envelope.index(delimiter, envelope.index(delimiter) + 1)
    start = envelope.index(b"\r\n\r\n", second) + 4 if b"\r\n\r\n" in envelope[second:] else envelope.index(b"\n\n", second) + 2
    end = envelope.rindex(delimiter + b"--")
    return envelope[:start], envelope[start:end], envelope[end:]


def openssl_two_signers(env, content):
    pki = env["pki"]
    path = env["tmp"] / "content.json"
    path.write_bytes(content)
    return subprocess.run(["openssl", "smime", "-sign", "-md", "sha256", "-in", str(path), "-signer", pki.good.cert_path,
                           "-inkey", pki.good.key_path, "-signer", pki.rsa.cert_path, "-inkey", pki.rsa.key_path],
                          check=True, stdout=subprocess.PIPE).stdout


def openssl_sha1(env, content):
    pki = env["pki"]
    path = env["tmp"] / "content.json"
    path.write_bytes(content)
    return subprocess.run(["openssl", "smime", "-sign", "-md", "sha1", "-in", str(path), "-signer", pki.good.cert_path,
                           "-inkey", pki.good.key_path], check=True, stdout=subprocess.PIPE).stdout


def garbage_signature(env, _content):
    head, _sig, tail = split_signature(sign(env["pki"].good, encode(document(env["pki"].good))))
    return head + b"!!!! this is not base64 ????\r\n" + tail


def random_der_signature(env, _content):
    head, _sig, tail = split_signature(sign(env["pki"].good, encode(document(env["pki"].good))))
    return head + base64.encodebytes(b"\x30\x82\x01\x00" + os.urandom(256)) + tail


def tampered(env, content):
    envelope = sign(env["pki"].good, content)
    return envelope.replace(b"Site list", b"Evil list", 1)


def truncated(env, content):
    envelope = sign(env["pki"].good, content)
    return envelope[:len(envelope) * 2 // 3]


def unsigned(_env, content):
    return content


def body_only(env, content):
    """A multipart/signed whose signature part was dropped."""
    head, _sig, tail = split_signature(sign(env["pki"].good, content))
    return head.rsplit(b"--", 1)[0]


def signed_by(name, check=True, digest="sha256"):
    def make(env, content):
        return sign(getattr(env["pki"], name), content, check=check, digest=digest)
    return make


def doc_for(name, **changes):
    def make(env):
        return encode(document(getattr(env["pki"], name), **changes))
    return make


def good_doc(**changes):
    return doc_for("good", **changes)


def raw(data):
    return lambda env: data


def image_change(**changes):
    def make(env):
        doc = document(env["pki"].good)
        doc["hv:imagelist"]["hv:images"][0]["hv:image"].update(changes)
        return encode(doc)
    return make


def image_drop(key):
    def make(env):
        doc = document(env["pki"].good)
        del doc["hv:imagelist"]["hv:images"][0]["hv:image"][key]
        return encode(doc)
    return make


def list_drop(key):
    def make(env):
        doc = document(env["pki"].good)
        del doc["hv:imagelist"][key]
        return encode(doc)
    return make


def claims(dn=None, ca=None):
    def make(env):
        good = env["pki"].good
        return encode(document(good, **{"hv:endorser": {"hv:x509": {"hv:dn": dn or good.dn, "hv:ca": ca or good.issuer_dn}}}))
    return make


def duplicate_images(env):
    doc = document(env["pki"].good)
    images = doc["hv:imagelist"]["hv:images"]
    images.append(copy.deepcopy(images[0]))
    return encode(doc)


def duplicate_keys(env):
    text = encode(document(env["pki"].good)).decode()
    return text.replace('"hv:version": "5"', '"hv:version": "5", "hv:version": "9"', 1).encode()


def deeply_nested(env):
    doc = document(env["pki"].good)
    doc["hv:imagelist"]["hv:images"][0]["hv:image"]["sl:comments"] = [[[[[[[["deep"]]]]]]]]
    return encode(doc)


def non_utf8(env):
    return encode(document(env["pki"].good)).replace(b"Site list", b"Site \xff\xfe list")


SIGNATURE_CASES = [
    # name, content maker, envelope maker, expected reason
    ("tampered_payload", good_doc(), tampered, "signature does not match the content"),
    ("untrusted_ca", doc_for("rogue"), signed_by("rogue"), "untrusted CA"),
    ("self_signed_signer", doc_for("self_signed"), signed_by("self_signed", check=False), "self-signed"),
    ("revoked_certificate", doc_for("revoked"), signed_by("revoked"), "revoked"),
    ("expired_certificate", doc_for("expired"), signed_by("expired", check=False), "expired"),
    ("not_yet_valid_certificate", doc_for("not_yet_valid"), signed_by("not_yet_valid", check=False), "not yet valid"),
    ("wrong_key_usage", doc_for("no_digital_signature"), signed_by("no_digital_signature", check=False), "digitalSignature"),
    ("unsigned_list", good_doc(), unsigned, "not an S/MIME signed message"),
    ("signature_part_missing", good_doc(), body_only, "malformed S/MIME envelope"),
    ("two_signers", good_doc(), openssl_two_signers, "exactly one signer"),
    ("garbage_base64_signature", good_doc(), garbage_signature, "malformed S/MIME envelope"),
    ("random_der_signature", good_doc(), random_der_signature, "malformed S/MIME envelope"),
    ("truncated_envelope", good_doc(), truncated, "image list"),
    ("sha1_legacy_digest", good_doc(), openssl_sha1, "sha1"),
]

PAYLOAD_CASES = [
    # name, content maker, expected reason (signed correctly by the good endorser)
    ("signer_not_hv_dn", claims(dn="/DC=org/DC=vmic-test/O=VMIC Test/CN=Endorser someone else"), "is not hv:dn"),
    ("issuer_not_hv_ca", claims(ca="/DC=org/DC=vmic-test/O=VMIC Test/CN=VMIC Other Root CA"), "is not hv:ca"),
    ("list_uuid_swapped", good_doc(**{"dc:identifier": "00000000-1111-4222-8333-444444444444"}), "list swapped"),
    ("expired_list", good_doc(**{"dc:date:expires": il.format_date(NOW - 60)}), "expired"),
    ("created_in_the_future", good_doc(**{"dc:date:created": il.format_date(NOW + 86400)}), "in the future"),
    ("expires_before_created", good_doc(**{"dc:date:created": il.format_date(NOW - 100), "dc:date:expires": il.format_date(NOW - 200)}),
     "before it was created"),
    ("date_without_zulu", good_doc(**{"dc:date:expires": "2030-01-01 00:00:00"}), "not a YYYY-MM-DDTHH:MM:SSZ date"),
    ("deeply_nested", deeply_nested, "nested more deeply"),
    ("non_utf8_payload", non_utf8, "not valid UTF-8"),
    ("payload_not_json", raw(b"this is not json"), "not valid JSON"),
    ("payload_not_an_object", raw(b"[1, 2, 3]"), "not a JSON object"),
    ("duplicate_json_keys", duplicate_keys, "duplicate key"),
    ("duplicate_image_uuids", duplicate_images, "duplicate image identifier"),
    ("missing_images", list_drop("hv:images"), "lacks hv:images"),
    ("missing_endorser", list_drop("hv:endorser"), "lacks hv:endorser"),
    ("missing_version", list_drop("hv:version"), "lacks hv:version"),
    ("image_missing_checksum", image_drop("sl:checksum:sha512"), "lacks sl:checksum:sha512"),
    ("image_missing_size", image_drop("hv:size"), "lacks hv:size"),
    ("malformed_sha512", image_change(**{"sl:checksum:sha512": "12345"}), "sl:checksum:sha512 is not 128"),
    ("negative_size", image_change(**{"hv:size": -1}), "is negative"),
    ("size_wrong_type", image_change(**{"hv:size": [1]}), "hv:size must be an integer"),
    ("title_wrong_type", image_change(**{"dc:title": {"a": 1}}), "dc:title must be a string"),
    ("image_uuid_malformed", image_change(**{"dc:identifier": "../../etc/passwd"}), "is not a UUID"),
    ("image_version_store_metadata_collision", image_change(**{"hv:version": "2.json"}), "reserved by the image store"),
    ("image_version_store_torrent_collision", image_change(**{"hv:version": "1.torrent"}), "reserved by the image store"),
    ("image_version_store_link_collision", image_change(**{"hv:version": "current"}), "reserved by the image store"),
    ("list_uuid_malformed", good_doc(**{"dc:identifier": "42"}), "is not a UUID"),
    ("version_path_traversal", good_doc(**{"hv:version": "../../x"}), "is not a version string"),
    ("image_version_wrong_type", image_change(**{"hv:version": 1.5}), "hv:version must be a string"),
    ("overlong_field", image_change(**{"dc:description": "x" * (il.MAX_STRING_LENGTH + 1)}), "longer than"),
    ("nul_in_field", image_change(**{"dc:title": "a\u0000b"}), "NUL character"),
    ("torrent_hash_malformed", image_change(**{"vmic:torrent_sha256": "nothex"}), "vmic:torrent_sha256 is malformed"),
    ("endorser_dn_garbage", claims(dn="not a dn"), "hv:dn"),
]


@pytest.mark.parametrize("name,content,make,reason", SIGNATURE_CASES, ids=[case[0] for case in SIGNATURE_CASES])
def test_bad_signature_refused(env, name, content, make, reason):
    accept_version_5(env)
    before = snapshot(env["state_dir"])
    verdict = run(env, make(env, content(env)))
    assert not verdict.valid, name
    joined = " | ".join(verdict.reasons)
    assert reason in joined, joined
    assert all(r.startswith("image list %s" % SOURCE) for r in verdict.reasons), joined
    assert snapshot(env["state_dir"]) == before


@pytest.mark.parametrize("name,content,reason", PAYLOAD_CASES, ids=[case[0] for case in PAYLOAD_CASES])
def test_bad_payload_refused(env, name, content, reason):
    accept_version_5(env)
    before = snapshot(env["state_dir"])
    verdict = run(env, sign(env["pki"].good, content(env)))
    assert not verdict.valid, name
    joined = " | ".join(verdict.reasons)
    assert reason in joined, joined
    assert snapshot(env["state_dir"]) == before


def test_rollback_refused(env):
    accept_version_5(env)
    before = snapshot(env["state_dir"])
    verdict = run(env, sign(env["pki"].good, encode(document(env["pki"].good, version="4"))))
    assert not verdict.valid and "rollback" in verdict.reasons[0]
    assert snapshot(env["state_dir"]) == before


def test_same_version_different_bytes_refused(env):
    accept_version_5(env)
    before = snapshot(env["state_dir"])
    verdict = run(env, sign(env["pki"].good, encode(document(env["pki"].good, **{"dc:title": "Other title"}))))
    assert not verdict.valid and "same version, different bytes" in verdict.reasons[0]
    assert snapshot(env["state_dir"]) == before


def test_unknown_endorser_refused(env):
    registry = EndorserRegistry([{"name": "someone", "dn": "/CN=Someone", "ca": "/CN=Some CA"}])
    verdict = run(env, sign(env["pki"].good, encode(document(env["pki"].good))), registry=registry)
    assert not verdict.valid and "is not a trusted endorser" in verdict.reasons[0]
    assert snapshot(env["state_dir"]) == {}


def test_endorser_with_other_issuer_refused(env):
    pki = env["pki"]
    registry = EndorserRegistry([{"name": "good", "dn": pki.good.dn, "ca": pki.other_ca.dn}])
    verdict = run(env, sign(pki.good, encode(document(pki.good))), registry=registry)
    assert not verdict.valid and "is not a trusted endorser" in verdict.reasons[0]


def test_endorser_not_trusted_for_this_catalogue(env):
    registry = registry_for(env["pki"], urls=["https://repo.test/lists/other.list"])
    verdict = run(env, sign(env["pki"].good, encode(document(env["pki"].good))), registry=registry)
    assert not verdict.valid and "not trusted for this catalogue" in verdict.reasons[0]


def test_oversized_envelope_refused(env):
    verdict = run(env, b"x" * 2048, max_bytes=1024)
    assert not verdict.valid and "limit" in verdict.reasons[0]


def test_every_reason_is_reported(env):
    pki = env["pki"]
    doc = document(pki.good, **{"dc:identifier": "00000000-1111-4222-8333-444444444444", "dc:date:expires": il.format_date(NOW - 60)})
    verdict = run(env, sign(pki.good, encode(doc)))
    joined = " | ".join(verdict.reasons)
    assert "list swapped" in joined and "expired" in joined


def test_sha1_accepted_only_when_legacy_digests_allowed(env):
    envelope = openssl_sha1(env, encode(document(env["pki"].good)))
    assert not run(env, envelope).valid
    verdict = run(env, envelope, allow_legacy_digests=True)
    assert verdict.valid, verdict.reasons
    assert verdict.digest == "sha1"


def test_valid_list_accepted_and_recorded(env):
    verdict = accept_version_5(env)
    assert verdict.state_changed and verdict.endorser == "good"
    assert json.loads((env["state_dir"] / "good" / ("%s.json" % LIST_ID)).read_text())["version"] == "5"
    again = accept_version_5(env)
    assert not again.state_changed


def test_check_mode_never_records(env):
    verdict = run(env, sign(env["pki"].good, encode(document(env["pki"].good))), record=False)
    assert verdict.valid and verdict.state_changed
    assert snapshot(env["state_dir"]) == {}


def test_newer_version_accepted(env):
    accept_version_5(env)
    verdict = run(env, sign(env["pki"].good, encode(document(env["pki"].good, version="6"))))
    assert verdict.valid and verdict.previous_version == "5"


def test_chain_via_intermediate_and_rsa_accepted(env):
    pki = env["pki"]
    for identity in (pki.via_intermediate, pki.rsa):
        verdict = verify_image_list(sign(identity, encode(document(identity))), SOURCE, env["trust"], env["registry"], now=NOW)
        assert verdict.valid, verdict.reasons


def test_expired_image_reported_not_fatal(env):
    doc = document(env["pki"].good)
    doc["hv:imagelist"]["hv:images"][0]["hv:image"]["dc:date:expires"] = il.format_date(NOW - 10)
    verdict = run(env, sign(env["pki"].good, encode(doc)))
    assert verdict.valid and verdict.expired_images == [IMAGE_ID]


def test_payload_is_canonical_signed_bytes(env):
    content = encode(document(env["pki"].good))
    verdict = run(env, sign(env["pki"].good, content))
    assert verdict.image_list is not None
    assert verdict.sha256 is not None and len(verdict.sha256) == 64
    assert smime_canonical(content)  # the payload the readers hash


def test_two_signers_made_with_cryptography_refused(env):
    pki = env["pki"]
    builder = (pkcs7.PKCS7SignatureBuilder().set_data(smime_canonical(encode(document(pki.good))))
               .add_signer(pki.good.cert, pki.good.key, hashes.SHA256())
               .add_signer(pki.rsa.cert, pki.rsa.key, hashes.SHA256()))
    envelope = builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    verdict = run(env, envelope)
    assert not verdict.valid and "exactly one signer" in " ".join(verdict.reasons)
