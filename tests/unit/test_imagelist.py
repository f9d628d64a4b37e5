"""Image list model: real-world variants accepted, malformed lists refused with a named reason."""

import copy
import json
import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import imagelist as il

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hepix")
SHA = "a" * 128


def base_document():
    return {"hv:imagelist": {
        "dc:identifier": "4e186b44-2c64-40ea-97d5-e9e5c0bce059",
        "dc:title": "t",
        "dc:date:created": "2026-01-01T00:00:00Z",
        "dc:date:expires": "2027-01-01T00:00:00Z",
        "hv:version": "3",
        "hv:endorser": {"hv:x509": {"hv:dn": "/C=DE/O=GermanGrid/CN=E", "hv:ca": "/C=DE/O=GermanGrid/CN=CA"}},
        "hv:images": [{"hv:image": {
            "dc:identifier": "488dcdc4-9ab1-4fc8-a7ba-b7a5428ecb3d", "dc:title": "img", "hv:uri": "https://x/img",
            "sl:checksum:sha512": SHA, "hv:size": 10, "hv:version": "1"}}],
    }}


def encode(document):
    return json.dumps(document).encode()


def test_hepixvmitrust_fixture_parses():
    with open(os.path.join(FIXTURES, "hepixvmitrust_imagelist_unsigned.json"), "rb") as handle:
        parsed = il.parse_image_list(handle.read(), "fixture")
    assert parsed.identifier == "4e186b44-2c64-40ea-97d5-e9e5c0bce059"
    assert parsed.endorsers[0].dn == "/C=DE/O=GermanGrid/OU=DESY/CN=Owen Synge"
    assert parsed.images[0].size == 2147483648


def test_size_as_string_accepted():
    document = base_document()
    document["hv:imagelist"]["hv:images"][0]["hv:image"]["hv:size"] = "121243136"
    assert il.parse_image_list(encode(document), "s").images[0].size == 121243136


def test_endorser_array_accepted():
    document = base_document()
    body = document["hv:imagelist"]
    body["hv:endorser"] = [body["hv:endorser"], {"hv:x509": {"hv:dn": "CN=Other,O=X,C=CH", "hv:ca": "/C=CH/CN=CA2"}}]
    parsed = il.parse_image_list(encode(document), "a")
    assert [e.dn for e in parsed.endorsers] == ["/C=DE/O=GermanGrid/CN=E", "/C=CH/O=X/CN=Other"]


def test_legacy_unwrapped_list_accepted():
    document = base_document()["hv:imagelist"]
    parsed = il.parse_image_list(encode(document), "legacy")
    assert parsed.legacy_unwrapped
    assert json.loads(parsed.to_json_bytes())["hv:imagelist"]["dc:identifier"] == parsed.identifier


def test_images_without_wrapper_accepted():
    document = base_document()
    body = document["hv:imagelist"]
    body["hv:images"] = [body["hv:images"][0]["hv:image"]]
    assert len(il.parse_image_list(encode(document), "bare").images) == 1


def test_vo_inherited_from_list():
    document = base_document()
    document["hv:imagelist"]["ad:vo"] = "atlas"
    assert il.parse_image_list(encode(document), "vo").images[0].vo == "atlas"


def mutate(path, value=None, delete=False):
    document = base_document()
    target = document
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return encode(document)


IMG = ["hv:imagelist", "hv:images", 0, "hv:image"]
LIST = ["hv:imagelist"]

BAD = [
    ("date_without_z", mutate(LIST + ["dc:date:created"], "2026-01-01T00:00:00"), "not a YYYY-MM-DDTHH:MM:SSZ date"),
    ("date_with_offset", mutate(LIST + ["dc:date:expires"], "2027-01-01T00:00:00+01:00"), "not a YYYY-MM-DDTHH:MM:SSZ date"),
    ("missing_expires", mutate(LIST + ["dc:date:expires"], delete=True), "lacks dc:date:expires"),
    ("missing_images", mutate(LIST + ["hv:images"], delete=True), "lacks hv:images"),
    ("list_identifier_not_uuid", mutate(LIST + ["dc:identifier"], "not-a-uuid"), "is not a UUID"),
    ("image_identifier_not_uuid", mutate(IMG + ["dc:identifier"], "x"), "is not a UUID"),
    ("malformed_sha512", mutate(IMG + ["sl:checksum:sha512"], "abc"), "sl:checksum:sha512 is not 128"),
    ("upper_case_sha512", mutate(IMG + ["sl:checksum:sha512"], "A" * 128), "sl:checksum:sha512 is not 128"),
    ("negative_size", mutate(IMG + ["hv:size"], -1), "is negative"),
    ("negative_size_string", mutate(IMG + ["hv:size"], "-5"), "not a non-negative integer"),
    ("size_float", mutate(IMG + ["hv:size"], 1.5), "hv:size must be an integer"),
    ("size_boolean", mutate(IMG + ["hv:size"], True), "not a boolean"),
    ("title_wrong_type", mutate(IMG + ["dc:title"], 5), "dc:title must be a string"),
    ("uri_missing", mutate(IMG + ["hv:uri"], delete=True), "lacks hv:uri"),
    ("endorser_without_dn", mutate(LIST + ["hv:endorser"], {"hv:x509": {"hv:ca": "/CN=CA"}}), "lacks hv:dn"),
    ("endorser_bad_dn", mutate(LIST + ["hv:endorser"], {"hv:x509": {"hv:dn": "garbage", "hv:ca": "/CN=CA"}}), "hv:dn"),
    ("endorser_wrong_type", mutate(LIST + ["hv:endorser"], "me"), "hv:endorser must be an object or an array"),
    ("images_not_array", mutate(LIST + ["hv:images"], {}), "hv:images must be an array"),
    ("version_object", mutate(LIST + ["hv:version"], {"a": 1}), "hv:version must be a string"),
    ("torrent_hash_malformed", mutate(IMG + ["vmic:btih_v1"], "zz"), "vmic:btih_v1 is malformed"),
    ("extra_top_level_key", encode(dict(base_document(), extra=1)), "unexpected keys beside hv:imagelist"),
    ("not_an_object", b"[1, 2]", "not a JSON object"),
    ("nan_constant", b'{"hv:imagelist": {"x": NaN}}', "NaN is not allowed"),
    ("nul_in_string", mutate(IMG + ["dc:title"], "a\u0000b"), "NUL character"),
]


@pytest.mark.parametrize("name,data,reason", BAD, ids=[case[0] for case in BAD])
def test_malformed_list_refused(name, data, reason):
    with pytest.raises(il.ImageListError) as info:
        il.parse_image_list(data, "case-%s" % name)
    assert reason in str(info.value)
    assert "case-%s" % name in str(info.value)


def test_duplicate_image_identifiers_refused():
    document = base_document()
    images = document["hv:imagelist"]["hv:images"]
    images.append(copy.deepcopy(images[0]))
    with pytest.raises(il.ImageListError, match="duplicate image identifier"):
        il.parse_image_list(encode(document), "dup")


def test_duplicate_json_keys_refused():
    with pytest.raises(il.ImageListError, match="duplicate key"):
        il.parse_image_list(b'{"hv:imagelist": {"hv:version": "1", "hv:version": "2"}}', "dupkeys")


def test_non_utf8_refused():
    with pytest.raises(il.ImageListError, match="not valid UTF-8"):
        il.parse_image_list(b'{"hv:imagelist": {"dc:title": "\xff\xfe"}}', "latin1")


def test_oversized_refused():
    with pytest.raises(il.ImageListError, match="larger than the limit"):
        il.parse_image_list(b" " * (il.MAX_LIST_BYTES + 1), "big")


def test_deeply_nested_refused():
    with pytest.raises(il.ImageListError, match="nested more deeply"):
        il.parse_image_list(b"[" * 100000 + b"]" * 100000, "deep")
    with pytest.raises(il.ImageListError, match="nested more deeply"):
        il.parse_image_list(encode({"hv:imagelist": {"a": [[[[[[[[[1]]]]]]]]]}}), "deep2")


def test_too_many_images_refused():
    document = base_document()
    image = document["hv:imagelist"]["hv:images"][0]
    document["hv:imagelist"]["hv:images"] = [image] * (il.MAX_IMAGES + 1)
    with pytest.raises(il.ImageListError, match="more than the limit"):
        il.parse_image_list(encode(document), "many")


def test_overlong_field_refused():
    with pytest.raises(il.ImageListError, match="longer than"):
        il.parse_image_list(mutate(IMG + ["dc:description"], "x" * (il.MAX_STRING_LENGTH + 1)), "long")


def test_version_order():
    assert il.compare_versions("10", "9") == 1
    assert il.compare_versions("3.3.0-1", "3.3.0-2") == -1
    assert il.compare_versions("20150618211400", "20150618211400") == 0


def test_build_and_serialise_round_trip():
    built = il.build_image_list({"dc:identifier": "4e186b44-2c64-40ea-97d5-e9e5c0bce059", "dc:title": "x"},
                                {"hv:dn": "/CN=E", "hv:ca": "/CN=CA"},
                                [base_document()["hv:imagelist"]["hv:images"][0]["hv:image"]], 7, 0, 86400)
    again = il.parse_image_list(built.to_json_bytes(), "rt")
    assert again.to_json_bytes() == built.to_json_bytes()
    assert again.created == "1970-01-01T00:00:00Z" and again.version == "7"


@pytest.mark.parametrize("uri", ["/srv/repo/torrents/img.torrent", "img.torrent", "file:///etc/passwd", "ftp://repo.test/img.torrent",
                                 "https:///no-host.torrent", "https://repo.test/a b.torrent", "//repo.test/img.torrent"])
def test_local_path_torrent_refused(uri):
    with pytest.raises(il.ImageListError) as info:
        il.parse_image_list(mutate(IMG + ["vmic:torrent"], uri), "torrent-uri")
    assert "vmic:torrent %r is not an absolute https:// (or http://) URL" % uri in str(info.value)


@pytest.mark.parametrize("uri", ["https://repo.test/torrents/img.torrent", "http://repo.test:8080/t/img.torrent?x=1", "HTTPS://Repo.Test/t"])
def test_torrent_url_accepted(uri):
    assert il.parse_image_list(mutate(IMG + ["vmic:torrent"], uri), "torrent-uri").images[0].torrent_uri == uri


@pytest.mark.parametrize("field", ["image", "list", "sha512", "btih_v1"])
def test_trailing_newline_identifier_refused(field):
    """An identifier with a trailing newline ('$' in a pattern accepts one) would name another directory in the store."""
    document = base_document()
    body, image = document["hv:imagelist"], document["hv:imagelist"]["hv:images"][0]["hv:image"]
    if field == "image":
        image["dc:identifier"] += "\n"
    elif field == "list":
        body["dc:identifier"] += "\n"
    elif field == "sha512":
        image["sl:checksum:sha512"] += "\n"
    else:
        image[il.BTIH_V1] = "b" * 40 + "\n"
    with pytest.raises(il.ImageListError):
        il.parse_image_list(encode(document), "newline")
