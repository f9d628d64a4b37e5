# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make, parse and check the .torrent files that carry one VM image.

Every torrent of this collection is hybrid (BitTorrent v1 and v2 in one info dictionary) and
holds exactly one file.  ``make_torrent`` builds one with libtorrent; ``parse_torrent`` reads one
with a strict, size-limited bencode decoder written here (so that a hypervisor can check a
downloaded .torrent before anything hands it to libtorrent), and ``check_torrent`` compares a
.torrent with the values of the signed image list: the sha256 of the .torrent bytes first, before
any parsing, then name, size and both info-hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import tempfile

from ansible_collections.vmic.fleet.plugins.module_utils.errors import LimitError, TorrentError

DEFAULT_PIECE_SIZE = 4 * 1024 * 1024
MIN_PIECE_SIZE = 16 * 1024
MAX_PIECE_SIZE = 64 * 1024 * 1024
# 10 MiB holds the hashes of an image of about 800 GB in 4 MiB pieces (52 bytes per piece),
# and its base64 form still fits in one engine request.
MAX_TORRENT_BYTES = 10 * 1024 * 1024
MAX_NAME_BYTES = 255
MAX_URL_BYTES = 2048
MAX_URLS = 64
MAX_DEPTH = 32
MAX_TOKENS = 100000

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_URL_SCHEMES = ("http://", "https://", "udp://")


class TorrentMeta(object):
    """What this collection knows about one single-file hybrid torrent."""

    __slots__ = ("data", "name", "size", "piece_size", "info_hash_v1", "info_hash_v2", "sha256", "trackers", "web_seeds")

    def __init__(self, data, name, size, piece_size, info_hash_v1, info_hash_v2, sha256, trackers, web_seeds):
        self.data = data
        self.name = name
        self.size = size
        self.piece_size = piece_size
        self.info_hash_v1 = info_hash_v1
        self.info_hash_v2 = info_hash_v2
        self.sha256 = sha256
        self.trackers = list(trackers)
        self.web_seeds = list(web_seeds)

    def to_dict(self):
        """Everything but the raw bytes, for module results and logs."""
        return dict((field, getattr(self, field)) for field in self.__slots__ if field != "data")

    def __repr__(self):
        return "TorrentMeta(name=%r, size=%d, info_hash_v1=%s)" % (self.name, self.size, self.info_hash_v1)


# --------------------------------------------------------------------------- bencode


class _Decoder(object):
    """Strict bencode decoder: canonical integers, sorted unique dict keys, depth and token limits.

    Dictionaries are returned as plain dicts with bytes keys; the byte span of the top-level
    ``info`` value is recorded so that info-hashes are computed over the exact bytes received.
    """

    def __init__(self, data, what):
        self.data = data
        self.what = what
        self.pos = 0
        self.tokens = 0
        self.info_span = None

    def fail(self, reason):
        raise TorrentError("%s: bad bencode at byte %d: %s" % (self.what, self.pos, reason))

    def decode(self):
        value = self.value(0, top=True)
        if self.pos != len(self.data):
            self.fail("trailing data after the top-level value")
        return value

    def value(self, depth, top=False):
        if depth > MAX_DEPTH:
            raise LimitError("%s: bencode nesting deeper than %d" % (self.what, MAX_DEPTH))
        self.tokens += 1
        if self.tokens > MAX_TOKENS:
            raise LimitError("%s: more than %d bencode values" % (self.what, MAX_TOKENS))
        if self.pos >= len(self.data):
            self.fail("unexpected end of data")
        lead = self.data[self.pos:self.pos + 1]
        if lead == b"i":
            return self.integer()
        if lead == b"l":
            self.pos += 1
            items = []
            while self.peek() != b"e":
                items.append(self.value(depth + 1))
            self.pos += 1
            return items
        if lead == b"d":
            return self.dictionary(depth, top)
        if lead.isdigit():
            return self.string()
        self.fail("unexpected byte %r" % lead)
        return None

    def peek(self):
        if self.pos >= len(self.data):
            self.fail("unexpected end of data")
        return self.data[self.pos:self.pos + 1]

    def integer(self):
        end = self.data.find(b"e", self.pos + 1, self.pos + 32)
        if end < 0:
            self.fail("unterminated or too long integer")
        text = self.data[self.pos + 1:end]
        if not re.match(br"^(0|-?[1-9][0-9]*)$", text):
            self.fail("non-canonical integer %r" % text[:20])
        self.pos = end + 1
        return int(text)

    def string(self):
        colon = self.data.find(b":", self.pos, self.pos + 12)
        if colon < 0:
            self.fail("bad string length")
        text = self.data[self.pos:colon]
        if not re.match(br"^(0|[1-9][0-9]*)$", text):
            self.fail("non-canonical string length %r" % text)
        length = int(text)
        start = colon + 1
        if start + length > len(self.data):
            self.fail("string runs past the end of data")
        self.pos = start + length
        return self.data[start:start + length]

    def dictionary(self, depth, top):
        self.pos += 1
        result = {}
        previous = None
        while self.peek() != b"e":
            if not self.peek().isdigit():
                self.fail("dictionary key is not a string")
            key = self.string()
            if previous is not None and key <= previous:
                self.fail("dictionary keys not sorted or repeated (%r)" % key[:40])
            previous = key
            start = self.pos
            result[key] = self.value(depth + 1)
            if top and key == b"info":
                self.info_span = (start, self.pos)
        self.pos += 1
        return result


def bdecode(data, what="torrent"):
    """Decode bencoded ``data``; return ``(value, info_span)`` (span of a top-level ``info``, or None)."""
    decoder = _Decoder(data, what)
    value = decoder.decode()
    return value, decoder.info_span


# --------------------------------------------------------------------------- checks


def check_name(name, what="torrent"):
    """Refuse file names that could leave the target directory or hide from a listing."""
    if not isinstance(name, str) or not name:
        raise TorrentError("%s: file name is empty" % what)
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise TorrentError("%s: file name longer than %d bytes" % (what, MAX_NAME_BYTES))
    if "/" in name or "\\" in name:
        raise TorrentError("%s: file name %r contains a path separator" % (what, name))
    if name.startswith("."):
        raise TorrentError("%s: file name %r starts with a dot" % (what, name))
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7f <= code < 0xa0 or 0xd800 <= code < 0xe000:
            raise TorrentError("%s: file name %r contains a control character" % (what, name))
    return name


def _check_url(url, what, kind):
    if not isinstance(url, str) or not url:
        raise TorrentError("%s: empty %s URL" % (what, kind))
    if len(url) > MAX_URL_BYTES:
        raise TorrentError("%s: %s URL longer than %d bytes" % (what, kind, MAX_URL_BYTES))
    if not url.startswith(_URL_SCHEMES):
        raise TorrentError("%s: %s URL %r is not http, https or udp" % (what, kind, url[:100]))
    if any(ord(char) <= 0x20 or ord(char) == 0x7f for char in url):
        raise TorrentError("%s: %s URL %r contains whitespace or control characters" % (what, kind, url[:100]))
    return url


def _text(value, what, field):
    if not isinstance(value, bytes):
        raise TorrentError("%s: %s is not a string" % (what, field))
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise TorrentError("%s: %s is not UTF-8" % (what, field))


def _int(value, what, field, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TorrentError("%s: %s is not an integer" % (what, field))
    if value < minimum:
        raise TorrentError("%s: %s is %d, below %d" % (what, field, value, minimum))
    return value


def _urls(top, what):
    trackers = []
    if b"announce" in top:
        trackers.append(_check_url(_text(top[b"announce"], what, "announce"), what, "tracker"))
    tiers = top.get(b"announce-list", [])
    if not isinstance(tiers, list):
        raise TorrentError("%s: announce-list is not a list" % what)
    for tier in tiers:
        if not isinstance(tier, list):
            raise TorrentError("%s: announce-list tier is not a list" % what)
        for url in tier:
            url = _check_url(_text(url, what, "announce-list entry"), what, "tracker")
            if url not in trackers:
                trackers.append(url)
    seeds = top.get(b"url-list", [])
    if isinstance(seeds, bytes):
        seeds = [seeds] if seeds else []
    if not isinstance(seeds, list):
        raise TorrentError("%s: url-list is not a list" % what)
    web_seeds = []
    for url in seeds:
        url = _check_url(_text(url, what, "url-list entry"), what, "web seed")
        if url not in web_seeds:
            web_seeds.append(url)
    if len(trackers) > MAX_URLS or len(web_seeds) > MAX_URLS:
        raise LimitError("%s: more than %d trackers or web seeds" % (what, MAX_URLS))
    return trackers, web_seeds


def parse_torrent(data, max_bytes=MAX_TORRENT_BYTES, what="torrent"):
    """Parse the bytes of a single-file hybrid v1+v2 .torrent and return a TorrentMeta.

    Refuses oversize input, bad or non-canonical bencode, multi-file torrents, v1-only or
    v2-only torrents, inconsistent piece data and unsafe file names.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TorrentError("%s: data is not bytes" % what)
    data = bytes(data)
    if len(data) > max_bytes:
        raise LimitError("%s: %d bytes, larger than the limit of %d bytes" % (what, len(data), max_bytes))
    top, span = bdecode(data, what)
    if not isinstance(top, dict):
        raise TorrentError("%s: top-level value is not a dictionary" % what)
    info = top.get(b"info")
    if not isinstance(info, dict) or span is None:
        raise TorrentError("%s: no info dictionary" % what)
    if b"files" in info:
        raise TorrentError("%s: multi-file torrent (v1 'files' list); only single-file torrents are accepted" % what)
    name = check_name(_text(info.get(b"name"), what, "name"), what)
    what = "%s %s" % (what, name)
    piece_size = _int(info.get(b"piece length"), what, "piece length", MIN_PIECE_SIZE)
    if piece_size > MAX_PIECE_SIZE or piece_size & (piece_size - 1):
        raise TorrentError("%s: piece length %d is not a power of two between %d and %d" % (what, piece_size, MIN_PIECE_SIZE, MAX_PIECE_SIZE))

    # v1 part
    if b"pieces" not in info or b"length" not in info:
        raise TorrentError("%s: no v1 data (pieces/length); only hybrid v1+v2 torrents are accepted" % what)
    size = _int(info.get(b"length"), what, "length", 1)
    pieces = info.get(b"pieces")
    num_pieces = (size + piece_size - 1) // piece_size
    if not isinstance(pieces, bytes) or len(pieces) != 20 * num_pieces:
        raise TorrentError("%s: v1 pieces hold %s bytes, expected %d" % (what, len(pieces) if isinstance(pieces, bytes) else "no", 20 * num_pieces))

    # v2 part
    if info.get(b"meta version") != 2 or b"file tree" not in info:
        raise TorrentError("%s: no v2 data (meta version 2, file tree); only hybrid v1+v2 torrents are accepted" % what)
    tree = info.get(b"file tree")
    if not isinstance(tree, dict) or len(tree) != 1:
        raise TorrentError("%s: v2 file tree does not hold exactly one entry (multi-file torrent)" % what)
    tree_name, node = list(tree.items())[0]
    if tree_name != info.get(b"name"):
        raise TorrentError("%s: v2 file tree entry %r differs from the name" % (what, tree_name[:100]))
    leaf = node.get(b"") if isinstance(node, dict) else None
    if not isinstance(leaf, dict) or len(node) != 1:
        raise TorrentError("%s: v2 file tree entry is a directory (multi-file torrent)" % what)
    if _int(leaf.get(b"length"), what, "v2 file length", 1) != size:
        raise TorrentError("%s: v2 file length %d differs from v1 length %d" % (what, leaf.get(b"length"), size))
    root = leaf.get(b"pieces root")
    if not isinstance(root, bytes) or len(root) != 32:
        raise TorrentError("%s: v2 pieces root is not 32 bytes" % what)
    if size > piece_size:
        layers = top.get(b"piece layers")
        layer = layers.get(root) if isinstance(layers, dict) else None
        if not isinstance(layer, bytes) or len(layer) != 32 * num_pieces:
            raise TorrentError("%s: v2 piece layer missing or not %d bytes" % (what, 32 * num_pieces))

    trackers, web_seeds = _urls(top, what)
    info_bytes = data[span[0]:span[1]]
    return TorrentMeta(
        data=data,
        name=name,
        size=size,
        piece_size=piece_size,
        info_hash_v1=hashlib.sha1(info_bytes).hexdigest(),
        info_hash_v2=hashlib.sha256(info_bytes).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
        trackers=trackers,
        web_seeds=web_seeds,
    )


def _expected_hex(value, pattern, what, field):
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or not pattern.match(text):
        raise TorrentError("%s: expected %s %r is not a hex digest of the right length" % (what, field, value))
    return text


def check_torrent(data, expected_name, expected_size, expected_v1, expected_v2, expected_sha256, what="torrent"):
    """Check a .torrent against the signed image list; return its TorrentMeta or raise TorrentError.

    The sha256 of the bytes is compared first, so that nothing unverified reaches the parser.
    """
    want_sha256 = _expected_hex(expected_sha256, _HEX64, what, "sha256")
    want_v1 = _expected_hex(expected_v1, _HEX40, what, "info_hash_v1")
    want_v2 = _expected_hex(expected_v2, _HEX64, what, "info_hash_v2")
    if not isinstance(data, (bytes, bytearray)):
        raise TorrentError("%s: data is not bytes" % what)
    if len(data) > MAX_TORRENT_BYTES:
        raise LimitError("%s: %d bytes, larger than the limit of %d bytes" % (what, len(data), MAX_TORRENT_BYTES))
    got_sha256 = hashlib.sha256(bytes(data)).hexdigest()
    if not hmac.compare_digest(got_sha256, want_sha256):
        raise TorrentError("%s: sha256 %s differs from the signed list's %s" % (what, got_sha256, want_sha256))
    meta = parse_torrent(data, what=what)
    if meta.name != expected_name:
        raise TorrentError("%s: name %r differs from the signed list's %r" % (what, meta.name, expected_name))
    try:
        want_size = int(expected_size)
    except (TypeError, ValueError):
        raise TorrentError("%s: expected size %r is not an integer" % (what, expected_size))
    if meta.size != want_size:
        raise TorrentError("%s: size %d differs from the signed list's %d" % (what, meta.size, want_size))
    if not hmac.compare_digest(meta.info_hash_v1, want_v1):
        raise TorrentError("%s: info_hash_v1 %s differs from the signed list's %s" % (what, meta.info_hash_v1, want_v1))
    if not hmac.compare_digest(meta.info_hash_v2, want_v2):
        raise TorrentError("%s: info_hash_v2 %s differs from the signed list's %s" % (what, meta.info_hash_v2, want_v2))
    return meta


def v2_truncated(info_hash_v2_hex):
    """The first 20 bytes of the v2 info-hash, as 40 hex: what trackers and v1 peers see for the v2 swarm."""
    text = _expected_hex(info_hash_v2_hex, _HEX64, "v2_truncated", "info_hash_v2")
    return text[:40]


# --------------------------------------------------------------------------- creation


def make_torrent(path, name=None, piece_size=DEFAULT_PIECE_SIZE, web_seeds=(), trackers=(), comment=None):
    """Hash the file at ``path`` into a single-file hybrid v1+v2 torrent; return its TorrentMeta.

    ``name`` is the file name inside the torrent (the basename of ``path`` by default).  The
    torrent carries no creation date, so the same file and arguments give the same bytes.
    """
    from ansible_collections.vmic.fleet.plugins.module_utils.libtorrent_dep import import_libtorrent

    lt = import_libtorrent()
    what = "torrent for %s" % path
    if name is None:
        name = os.path.basename(path)
    check_name(name, what)
    if isinstance(piece_size, bool) or not isinstance(piece_size, int) or not MIN_PIECE_SIZE <= piece_size <= MAX_PIECE_SIZE \
            or piece_size & (piece_size - 1):
        raise TorrentError("%s: piece size %r is not a power of two between %d and %d" % (what, piece_size, MIN_PIECE_SIZE, MAX_PIECE_SIZE))
    web_seeds = [_check_url(url, what, "web seed") for url in web_seeds]
    trackers = [_check_url(url, what, "tracker") for url in trackers]
    if comment is not None and (not isinstance(comment, str) or len(comment) > 4096):
        raise TorrentError("%s: comment is not a string of at most 4096 characters" % what)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise TorrentError("%s: %s" % (what, exc.strerror or exc))
    if not os.path.isfile(path) or size == 0:
        raise TorrentError("%s: not a non-empty regular file" % what)

    if hasattr(lt, "create_file_entry"):
        creator = lt.create_torrent([lt.create_file_entry(name, size)], piece_size)
    else:
        # libtorrent 2.0 (Debian 12's python3-libtorrent 2.0.8) has no create_file_entry: a file_storage
        files = lt.file_storage()
        files.add_file(name, size)
        creator = lt.create_torrent(files, piece_size)
    for url in web_seeds:
        creator.add_url_seed(url)
    for tier, url in enumerate(trackers):
        creator.add_tracker(url, tier)
    if comment:
        creator.set_comment(comment)
    creator.set_creator("vmic.fleet")
    # set_piece_hashes reads <dir>/<name>: give it a directory where the name points at the file.
    workdir = tempfile.mkdtemp(prefix=".vmic-torrent-")
    try:
        os.symlink(os.path.abspath(path), os.path.join(workdir, name))
        lt.set_piece_hashes(creator, workdir)
    except (OSError, RuntimeError) as exc:
        raise TorrentError("%s: hashing failed: %s" % (what, exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    entry = creator.generate()
    entry.pop(b"creation date", None)
    data = lt.bencode(entry)
    meta = parse_torrent(data, what=what)
    if meta.size != size:
        raise TorrentError("%s: file changed while hashing (%d bytes, now %d)" % (what, size, meta.size))
    return meta
