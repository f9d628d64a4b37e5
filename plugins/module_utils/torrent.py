# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make, parse and check the .torrent files that carry one VM image.

Every torrent of this collection is hybrid (BitTorrent v1 and v2 in one info dictionary) and
holds exactly one file.  ``make_torrent`` builds one with libtorrent; ``parse_torrent`` reads one
with libtorrent (``load_torrent_buffer`` within explicit size, depth, token and piece limits), accepts
only canonical bencode and checks what this collection needs on top of libtorrent's own checks; and
``check_torrent`` compares a .torrent with the values of the signed image list: the sha256 of the
.torrent bytes first, before any parsing, then name, size and both info-hashes.  The TorrentMeta
it returns carries libtorrent's ``add_torrent_params``, so a torrent is parsed once.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ansible_collections.vmic.fleet.plugins.module_utils.errors import LimitError, TorrentError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import HEX40_RE, HEX64_RE, MAX_TORRENT_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.libtorrent_dep import import_libtorrent

DEFAULT_PIECE_SIZE = 4 * 1024 * 1024
MIN_PIECE_SIZE = 16 * 1024
MAX_PIECE_SIZE = 64 * 1024 * 1024
# MAX_TORRENT_BYTES (identifiers.py) is the one size limit of a .torrent, wherever one is read: 10 MiB holds
# the hashes of an image of about 800 GB in 4 MiB pieces (52 bytes per piece), and its base64 form still fits
# in one engine request.
MAX_NAME_BYTES = 255
MAX_URL_BYTES = 2048
MAX_URLS = 64
# libtorrent's load_torrent_limits for a .torrent: a hybrid torrent holds 20 + 32 bytes of hashes per piece
MAX_DEPTH = 32
MAX_TOKENS = 100000
BYTES_PER_PIECE = 20 + 32
# libtorrent's error messages (bdecode_errors and errors::too_many_pieces_in_torrent, the same in 2.0 and 2.1)
_LIMIT_MESSAGES = ("nesting depth exceeded", "item count limit exceeded", "too many pieces")
_DECODE_MESSAGES = ("bencoded", "integer overflow")

_URL_SCHEMES = ("http://", "https://", "udp://")


class TorrentMeta(object):
    """What this collection knows about one single-file hybrid torrent."""

    __slots__ = ("data", "params", "name", "size", "piece_size", "info_hash_v1", "info_hash_v2", "sha256", "trackers", "web_seeds")

    def __init__(self, data, params, name, size, piece_size, info_hash_v1, info_hash_v2, sha256, trackers, web_seeds):
        self.data = data
        self.params = params
        self.name = name
        self.size = size
        self.piece_size = piece_size
        self.info_hash_v1 = info_hash_v1
        self.info_hash_v2 = info_hash_v2
        self.sha256 = sha256
        self.trackers = list(trackers)
        self.web_seeds = list(web_seeds)

    def to_dict(self):
        """Everything but the raw bytes and libtorrent's object, for module results and logs."""
        return dict((field, getattr(self, field)) for field in self.__slots__ if field not in ("data", "params"))

    def __repr__(self):
        return "TorrentMeta(name=%r, size=%d, info_hash_v1=%s)" % (self.name, self.size, self.info_hash_v1)


# --------------------------------------------------------------------------- libtorrent


def _limits(max_bytes):
    """libtorrent's ``load_torrent_limits``, as the dict its Python bindings (2.0 and 2.1) take."""
    return {
        "max_buffer_size": max_bytes,
        "max_pieces": max(1, max_bytes // BYTES_PER_PIECE),
        "max_decode_depth": MAX_DEPTH,
        "max_decode_tokens": MAX_TOKENS,
    }


def _first_difference(one, other):
    """The offset of the first byte where ``one`` and ``other`` differ (bisection: no per-byte Python loop)."""
    low, high = 0, min(len(one), len(other))
    while low < high:
        middle = (low + high) // 2
        if one[low:middle + 1] == other[low:middle + 1]:
            low = middle + 1
        else:
            high = middle
    return low


def bdecode(data, what="torrent"):
    """Decode canonical bencode with libtorrent; refuse any other encoding of the same value.

    libtorrent reads leading zeros, unsorted or repeated dictionary keys and trailing data
    without complaint, and where keys repeat its torrent parser takes the first while its
    ``bdecode`` keeps the last: such bytes could show this code one value and a BitTorrent client
    another.  Only bytes that libtorrent's ``bencode`` writes back unchanged are accepted.
    Callers bound the size, depth and token count first (``parse_torrent`` does, through libtorrent).
    """
    lt = import_libtorrent()
    data = bytes(data)
    try:
        value = lt.bdecode(data)
    except RuntimeError as exc:
        raise TorrentError("%s: bad bencode: %s" % (what, exc))
    canonical = lt.bencode(value)
    if canonical != data:
        raise TorrentError("%s: non-canonical bencode at byte %d (integers or lengths with leading zeros, dictionary keys not sorted "
                           "or repeated, or data after the end)" % (what, _first_difference(canonical, data)))
    return value


def _decode_named(data, what):
    """The top-level dictionary of the canonical bencode ``data`` and the torrent's checked file name."""
    top = bdecode(data, what)
    info = top.get(b"info") if isinstance(top, dict) else None
    if not isinstance(info, dict):
        raise TorrentError("%s: no info dictionary" % what)
    # libtorrent makes any name safe by rewriting it; this code refuses a name that needs rewriting
    return top, check_name(_text(info.get(b"name"), what, "name"), what)


def _load(data, max_bytes, what):
    """``libtorrent.load_torrent_buffer`` with explicit limits, then ``_decode_named``; return ``(params, top, name)``."""
    lt = import_libtorrent()
    try:
        params = lt.load_torrent_buffer(data, _limits(max_bytes))
    except RuntimeError as exc:
        reason = str(exc)
        if any(message in reason for message in _LIMIT_MESSAGES):
            raise LimitError("%s: over libtorrent's limits (depth %d, %d bencode values, %d pieces): %s"
                             % (what, MAX_DEPTH, MAX_TOKENS, _limits(max_bytes)["max_pieces"], reason))
        if any(message in reason for message in _DECODE_MESSAGES):
            raise TorrentError("%s: bad bencode (libtorrent: %s)" % (what, reason))
        # The bytes decoded within the limits and libtorrent refused the torrent: give this code's reason where it has one.
        _decode_named(data, what)
        raise TorrentError("%s: libtorrent refuses the torrent: %s" % (what, reason))
    top, name = _decode_named(data, what)
    return params, top, name


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


def _unique(urls, what, kind):
    found = []
    for url in urls:
        url = _check_url(url, what, kind)
        if url not in found:
            found.append(url)
    return found


def _urls(params, what):
    """The trackers and web seeds libtorrent will contact (BEP 12: ``announce`` only without ``announce-list``)."""
    trackers = _unique(params.trackers, what, "tracker")
    web_seeds = _unique(list(params.url_seeds) + list(params.http_seeds), what, "web seed")
    if len(trackers) > MAX_URLS or len(web_seeds) > MAX_URLS:
        raise LimitError("%s: more than %d trackers or web seeds" % (what, MAX_URLS))
    return trackers, web_seeds


def _file_storage(torrent_info):
    # libtorrent 2.1 deprecates files() for layout(); 2.0 (Debian 12's python3-libtorrent 2.0.8) has only files()
    return torrent_info.layout() if hasattr(torrent_info, "layout") else torrent_info.files()


def parse_torrent(data, max_bytes=MAX_TORRENT_BYTES, what="torrent"):
    """Parse the bytes of a single-file hybrid v1+v2 .torrent with libtorrent and return a TorrentMeta.

    Refuses oversize input (before parsing), what libtorrent refuses within this module's limits,
    non-canonical bencode, multi-file torrents, v1-only or v2-only torrents, missing piece layers
    and file names that libtorrent would have to rewrite.  ``TorrentMeta.params`` is libtorrent's
    ``add_torrent_params`` for these bytes, so that nothing needs to parse them again.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TorrentError("%s: data is not bytes" % what)
    data = bytes(data)
    if len(data) > max_bytes:
        raise LimitError("%s: %d bytes, larger than the limit of %d bytes" % (what, len(data), max_bytes))
    params, top, name = _load(data, max_bytes, what)
    what = "%s %s" % (what, name)
    torrent_info = params.ti
    hashes = torrent_info.info_hashes()
    if not hashes.has_v1():
        raise TorrentError("%s: no v1 data (pieces/length); only hybrid v1+v2 torrents are accepted" % what)
    if not hashes.has_v2():
        raise TorrentError("%s: no v2 data (meta version 2, file tree); only hybrid v1+v2 torrents are accepted" % what)
    files = _file_storage(torrent_info)
    if b"files" in top[b"info"] or files.num_files() != 1 or files.file_path(0) != name:
        raise TorrentError("%s: multi-file torrent (%d files, the first %r); only single-file torrents are accepted"
                           % (what, files.num_files(), files.file_path(0)))
    piece_size = torrent_info.piece_length()
    if not MIN_PIECE_SIZE <= piece_size <= MAX_PIECE_SIZE or piece_size & (piece_size - 1):
        raise TorrentError("%s: piece length %d is not a power of two between %d and %d" % (what, piece_size, MIN_PIECE_SIZE, MAX_PIECE_SIZE))
    size = files.file_size(0)     # libtorrent refuses a torrent of 0 bytes, hence a symbolic link
    num_pieces = torrent_info.num_pieces()
    if size > piece_size:
        # libtorrent loads a torrent without its piece layers (it would ask peers for them)
        layers = top.get(b"piece layers")
        layer = layers.get(files.root(0).to_bytes()) if isinstance(layers, dict) else None
        if not isinstance(layer, bytes) or len(layer) != 32 * num_pieces:
            raise TorrentError("%s: v2 piece layer missing or not %d bytes" % (what, 32 * num_pieces))

    trackers, web_seeds = _urls(params, what)
    return TorrentMeta(
        data=data,
        params=params,
        name=name,
        size=size,
        piece_size=piece_size,
        info_hash_v1=str(hashes.v1),
        info_hash_v2=str(hashes.v2),
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
    want_sha256 = _expected_hex(expected_sha256, HEX64_RE, what, "sha256")
    want_v1 = _expected_hex(expected_v1, HEX40_RE, what, "info_hash_v1")
    want_v2 = _expected_hex(expected_v2, HEX64_RE, what, "info_hash_v2")
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
    text = _expected_hex(info_hash_v2_hex, HEX64_RE, "v2_truncated", "info_hash_v2")
    return text[:40]


# --------------------------------------------------------------------------- creation


def create_torrent(files, piece_size, flags=0):
    """A ``libtorrent.create_torrent`` for ``files``, (path, size) pairs; ``flags`` 0 makes a hybrid v1+v2 torrent.

    ``flags`` takes ``libtorrent.create_torrent.v1_only``, ``v2_only`` and the library's other create flags.
    """
    lt = import_libtorrent()
    if hasattr(lt, "create_file_entry"):
        return lt.create_torrent([lt.create_file_entry(path, size) for path, size in files], piece_size, flags)
    # libtorrent 2.0 (Debian 12's python3-libtorrent 2.0.8) has no create_file_entry: a file_storage
    storage = lt.file_storage()
    for path, size in files:
        storage.add_file(path, size)
    creator = lt.create_torrent(storage, piece_size, flags)
    # libtorrent 2.0's create_torrent keeps a reference to the file_storage, which the bindings do not
    # keep alive: without this, hashing reads freed memory (a crash)
    creator.storage = storage
    return creator


def make_torrent(path, name=None, piece_size=DEFAULT_PIECE_SIZE, web_seeds=(), trackers=(), comment=None):
    """Hash the file at ``path`` into a single-file hybrid v1+v2 torrent; return its TorrentMeta.

    ``name`` is the file name inside the torrent (the basename of ``path`` by default).  The
    torrent carries no creation date, so the same file and arguments give the same bytes.
    """
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

    creator = create_torrent([(name, size)], piece_size)
    for url in web_seeds:
        creator.add_url_seed(url)
    for tier, url in enumerate(trackers):
        creator.add_tracker(url, tier)
    if comment:
        creator.set_comment(comment)
    creator.set_creator("vmic.fleet")
    # Imported here: the engine service imports this module but never makes torrents, and these two
    # modules (and what they import) would cost every engine about a MiB.
    import shutil  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel
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
