# -*- coding: utf-8 -*-
"""make_torrent / parse_torrent / check_torrent: round trips and the torrents they must refuse."""

import hashlib
import os
import sys

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import torrent as tmod
from ansible_collections.vmic.fleet.plugins.module_utils.errors import LimitError, MissingDependencyError, TorrentError
from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import library_version
from ansible_collections.vmic.fleet.plugins.module_utils.libtorrent_dep import import_libtorrent
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import (
    bdecode, check_torrent, create_torrent, make_torrent, parse_torrent, v2_truncated,
)

lt = import_libtorrent()
PIECE = 64 * 1024


def bencode(value):
    return lt.bencode(value)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "cirros.img"
    path.write_bytes(os.urandom(5 * PIECE + 1234))
    return str(path)


@pytest.fixture(scope="module")
def meta(image):
    return make_torrent(image, piece_size=PIECE, web_seeds=["https://repo.example/cirros.img"],
                        trackers=["http://tracker.example:6969/announce"], comment="test image")


def expected(meta, **overrides):
    values = dict(expected_name=meta.name, expected_size=meta.size, expected_v1=meta.info_hash_v1,
                  expected_v2=meta.info_hash_v2, expected_sha256=meta.sha256)
    values.update(overrides)
    return values


def decoded(meta):
    return bdecode(meta.data)


# --------------------------------------------------------------------------- round trip


def test_make_parse_check_round_trip(meta, image):
    assert meta.name == "cirros.img"
    assert meta.size == os.path.getsize(image)
    assert meta.piece_size == PIECE
    assert meta.sha256 == hashlib.sha256(meta.data).hexdigest()
    assert meta.trackers == ["http://tracker.example:6969/announce"]
    assert meta.web_seeds == ["https://repo.example/cirros.img"]
    parsed = parse_torrent(meta.data)
    assert parsed.to_dict() == meta.to_dict()
    assert check_torrent(meta.data, **expected(meta)).to_dict() == meta.to_dict()


def test_info_hashes_agree_with_libtorrent(meta):
    info = lt.torrent_info(meta.data)
    assert str(info.info_hashes().v1) == meta.info_hash_v1
    assert str(info.info_hashes().v2) == meta.info_hash_v2
    assert info.num_files() == 1


def test_hybrid_v1_and_v2_present(meta):
    info = decoded(meta)[b"info"]
    assert info[b"meta version"] == 2 and b"pieces" in info and b"file tree" in info


def test_same_file_gives_same_bytes(meta, image):
    again = make_torrent(image, piece_size=PIECE, web_seeds=["https://repo.example/cirros.img"],
                         trackers=["http://tracker.example:6969/announce"], comment="test image")
    assert again.data == meta.data
    assert b"creation date" not in again.data


def test_name_other_than_the_file_basename(image):
    renamed = make_torrent(image, name="other-name.raw", piece_size=PIECE)
    assert renamed.name == "other-name.raw"
    assert list(bdecode(renamed.data)[b"info"][b"file tree"]) == [b"other-name.raw"]


def test_v2_truncated(meta):
    assert v2_truncated(meta.info_hash_v2) == meta.info_hash_v2[:40]
    with pytest.raises(TorrentError):
        v2_truncated("xyz")


# --------------------------------------------------------------------------- check_torrent refusals


@pytest.mark.parametrize("field, value, reason", [
    ("expected_sha256", "0" * 64, "sha256"),
    ("expected_name", "other.img", "name"),
    ("expected_size", 12345, "size"),
    ("expected_v1", "0" * 40, "info_hash_v1"),
    ("expected_v2", "0" * 64, "info_hash_v2"),
])
def test_check_refuses_mismatch(meta, field, value, reason):
    with pytest.raises(TorrentError, match=reason):
        check_torrent(meta.data, **expected(meta, **{field: value}))


def test_check_accepts_size_as_string_and_upper_case_hex(meta):
    check_torrent(meta.data, **expected(meta, expected_size=str(meta.size), expected_sha256=meta.sha256.upper()))


def test_check_compares_sha256_before_parsing(meta):
    with pytest.raises(TorrentError, match="sha256"):
        check_torrent(b"garbage that is not bencode", **expected(meta))


def test_check_refuses_malformed_expected_values(meta):
    with pytest.raises(TorrentError, match="expected info_hash_v1"):
        check_torrent(meta.data, **expected(meta, expected_v1="abc"))


def test_check_refuses_oversize(meta):
    big = b"x" * (tmod.MAX_TORRENT_BYTES + 1)
    with pytest.raises(LimitError):
        check_torrent(big, **expected(meta, expected_sha256=hashlib.sha256(big).hexdigest()))


# --------------------------------------------------------------------------- parse_torrent refusals


def rebuild(meta, change):
    """Re-encode the torrent after ``change(top)``; info-hashes change with it."""
    top = decoded(meta)
    change(top)
    return bencode(top)


def test_parse_refuses_garbage():
    for data in (b"", b"garbage", b"d4:infoi1e", b"i12e", b"le", b"d3:abci1ee trailing"):
        with pytest.raises(TorrentError):
            parse_torrent(data)


def test_parse_refuses_non_canonical_bencode(meta):
    with pytest.raises(TorrentError, match="non-canonical"):
        parse_torrent(b"d1:ai01ee")
    with pytest.raises(TorrentError, match="sorted"):
        parse_torrent(b"d1:bi1e1:ai1ee")


def test_parse_refuses_deep_nesting():
    with pytest.raises(LimitError):
        parse_torrent(b"l" * 100 + b"e" * 100)


def test_token_flood_refused():
    with pytest.raises(LimitError, match="item count"):
        parse_torrent(b"l" + b"i1e" * (tmod.MAX_TOKENS + 1) + b"e")


def test_limits_reach_libtorrent(meta):
    # libtorrent ignores unknown keys of its limits dict: each limit must bite under its own name
    # (max_buffer_size applies only to files it reads itself; parse_torrent checks the size first)
    limits = tmod._limits(len(meta.data))
    assert lt.load_torrent_buffer(meta.data, limits).ti.name() == meta.name
    for key, tiny in (("max_pieces", 1), ("max_decode_depth", 1), ("max_decode_tokens", 5)):
        with pytest.raises(RuntimeError):
            lt.load_torrent_buffer(meta.data, dict(limits, **{key: tiny}))


def splice(data, old, new):
    assert data.count(old) == 1
    return data.replace(old, new)


ANNOUNCE = b"8:announce36:http://tracker.example:6969/announce"
COMMENT = b"7:comment10:test image"
URL_LIST = b"8:url-list31:https://repo.example/cirros.img"


def test_repeated_key_parser_differential_refused(meta):
    # outside the info dictionary libtorrent takes the first of repeated keys and its bdecode the last:
    # one .torrent would give two clients two web seeds
    data = splice(meta.data, URL_LIST, URL_LIST + b"8:url-list17:file:///etc/shdw/")
    assert lt.load_torrent_buffer(data).url_seeds == ["https://repo.example/cirros.img"]
    assert lt.bdecode(data)[b"url-list"] == b"file:///etc/shdw/"
    with pytest.raises(TorrentError, match="non-canonical bencode at byte .*repeated"):
        parse_torrent(data)


@pytest.mark.parametrize("old, new", [
    (COMMENT, b"7:comment010:test image"),
    (ANNOUNCE + COMMENT, COMMENT + ANNOUNCE),
    (b"d8:announce", b"d10:created by1:x8:announce"),
    (b"", b"4:junk"),
])
def test_non_canonical_encoding_outside_info_refused(meta, old, new):
    data = splice(meta.data, old, new) if old else meta.data + new
    assert lt.load_torrent_buffer(data).ti.name() == "cirros.img"      # libtorrent alone takes it
    with pytest.raises(TorrentError, match="non-canonical"):
        parse_torrent(data)


@pytest.mark.parametrize("old, new", [
    (b"12:piece lengthi65536e", b"12:piece lengthi065536e"),
    (b"4:name10:cirros.img", b"4:name10:cirros.img4:name10:passwd.img"),
])
def test_non_canonical_encoding_inside_info_refused(meta, old, new):
    data = splice(meta.data, old, new)
    with pytest.raises(RuntimeError):
        lt.load_torrent_buffer(data)                    # libtorrent requires a canonical info dictionary itself
    with pytest.raises(TorrentError, match="non-canonical"):
        parse_torrent(data)


def test_reencoded_torrent_with_the_signed_info_hashes_refused(meta):
    # same info dictionary, so same info-hashes, but other bytes: the signed sha256 of the exact bytes refuses it
    data = meta.data + b"\n"
    assert str(lt.load_torrent_buffer(data).info_hashes.v1) == meta.info_hash_v1
    with pytest.raises(TorrentError, match="sha256"):
        check_torrent(data, **expected(meta))


def test_parse_refuses_oversize(meta):
    with pytest.raises(LimitError):
        parse_torrent(meta.data, max_bytes=len(meta.data) - 1)


def test_parse_refuses_v1_only(image):
    creator = create_torrent([("cirros.img", os.path.getsize(image))], PIECE, lt.create_torrent.v1_only)
    lt.set_piece_hashes(creator, os.path.dirname(image))
    with pytest.raises(TorrentError, match="v2"):
        parse_torrent(bencode(creator.generate()))


def test_parse_refuses_v2_only(image):
    creator = create_torrent([("cirros.img", os.path.getsize(image))], PIECE, lt.create_torrent.v2_only)
    lt.set_piece_hashes(creator, os.path.dirname(image))
    with pytest.raises(TorrentError, match="v1"):
        parse_torrent(bencode(creator.generate()))


def test_parse_refuses_multi_file(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.img").write_bytes(os.urandom(PIECE))
    (tmp_path / "dir" / "b.img").write_bytes(os.urandom(PIECE))
    creator = create_torrent([("dir/a.img", PIECE), ("dir/b.img", PIECE)], PIECE)
    lt.set_piece_hashes(creator, str(tmp_path))
    with pytest.raises(TorrentError, match="multi-file"):
        parse_torrent(bencode(creator.generate()))


@pytest.mark.parametrize("name, reason", [
    (b"../etc/passwd", "separator"),
    (b"..", "dot"),
    (b".hidden.img", "dot"),
    (b"a/b.img", "separator"),
    (b"a\\b.img", "separator"),
    (b"bad\nname.img", "control"),
    (b"x" * 300, "longer"),
    (b"\xff\xfe.img", "UTF-8"),
    (b"", "empty"),
])
def test_parse_refuses_unsafe_names(meta, name, reason):
    def change(top):
        info = top[b"info"]
        old = info[b"name"]
        info[b"name"] = name
        info[b"file tree"] = {name: info[b"file tree"][old]}
    with pytest.raises(TorrentError, match=reason):
        parse_torrent(rebuild(meta, change))


def test_parse_refuses_inconsistent_lengths(meta):
    def change(top):
        top[b"info"][b"length"] += 1
    with pytest.raises(TorrentError):
        parse_torrent(rebuild(meta, change))


def test_parse_refuses_missing_piece_layers(meta):
    def change(top):
        del top[b"piece layers"]
    with pytest.raises(TorrentError, match="piece layer"):
        parse_torrent(rebuild(meta, change))


def test_parse_refuses_bad_web_seed_url(meta):
    def change(top):
        top[b"url-list"] = [b"file:///etc/passwd"]
    with pytest.raises(TorrentError, match="web seed"):
        parse_torrent(rebuild(meta, change))


# --------------------------------------------------------------------------- make_torrent refusals and the gate


def test_make_refuses_bad_piece_size_and_names(image):
    with pytest.raises(TorrentError, match="piece size"):
        make_torrent(image, piece_size=100000)
    with pytest.raises(TorrentError, match="separator"):
        make_torrent(image, name="a/b")
    with pytest.raises(TorrentError, match="tracker"):
        make_torrent(image, trackers=["ftp://x/announce"])


def test_make_refuses_missing_and_empty_files(tmp_path):
    with pytest.raises(TorrentError, match="No such file"):
        make_torrent(str(tmp_path / "missing.img"))
    (tmp_path / "empty.img").write_bytes(b"")
    with pytest.raises(TorrentError, match="non-empty"):
        make_torrent(str(tmp_path / "empty.img"))


def test_libtorrent_gate_version():
    assert library_version(lt) >= (2, 0)

    class Old(object):
        __version__ = "1.2.19.0"
    assert library_version(Old) == (1, 2)


def test_libtorrent_gate_missing_module(monkeypatch):
    from ansible_collections.vmic.fleet.plugins.module_utils import libtorrent_dep
    monkeypatch.setattr(libtorrent_dep, "_MODULE", [])
    monkeypatch.setitem(sys.modules, "libtorrent", None)
    with pytest.raises(MissingDependencyError, match="libtorrent"):
        libtorrent_dep.import_libtorrent()
