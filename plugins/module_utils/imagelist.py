# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HEPiX image list: one small object model, parsing and writing in one place.

An image list is JSON ``{"hv:imagelist": {...}}`` as vmcaster, vmcatcher, atrope and cloudkeeper
speak it. Parsing tolerates the real-world variants (``hv:size`` as int or string, ``hv:endorser`` as
object or array, a legacy list without the ``hv:imagelist`` wrapper, images with or without the
``hv:image`` wrapper) and is strict where it protects something: dates are ``YYYY-MM-DDTHH:MM:SSZ``,
identifiers are UUIDs, checksums are 128 hex digits, sizes are non-negative, duplicate JSON keys
and duplicate image identifiers are refused, and hard limits bound bytes, images, nesting and
field length.

BitTorrent data lives in per-image fields under the ``vmic:`` prefix, which HEPiX consumers ignore.
"""

from __future__ import annotations

import calendar
import copy
import json
import posixpath
import re
import time

from ansible_collections.vmic.fleet.plugins.module_utils.dn import DNError, canonical_dn, parse_dn
from ansible_collections.vmic.fleet.plugins.module_utils.errors import ImageListError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import HEX40_RE, HEX64_RE, SHA512_RE, UUID_RE

try:
    from urllib.parse import unquote, urlparse
except ImportError:  # pragma: no cover - Python 2 is not supported
    raise

MAX_LIST_BYTES = 8 * 1024 * 1024
MAX_IMAGES = 5000
MAX_DEPTH = 8
MAX_STRING_LENGTH = 64 * 1024
MAX_KEYS_PER_OBJECT = 256
MAX_ENDORSERS = 16

# The vmic:* fields. Signed per image by the publisher:
PREFIX = "vmic:"
TORRENT_URI = PREFIX + "torrent"
TORRENT_SHA256 = PREFIX + "torrent_sha256"
BTIH_V1 = PREFIX + "btih_v1"
BTIH_V2 = PREFIX + "btih_v2"
PIECE_SIZE = PREFIX + "piece_size"
# Added by the site's policy to an approved image (image_policy's result; JMESPath rules read the first two):
LIST_FIELD = PREFIX + "list"
ENDORSER_FIELD = PREFIX + "endorser"
SCOPE_FIELD = PREFIX + "scope"

DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
# vmic:torrent: an absolute http(s) URL with a host; no whitespace or control characters. Whether plain
# http is fetched is the consumer's choice (allow_http); file://, ftp:// and local paths never are.
_TORRENT_URL_RE = re.compile(r"^https?://[^/?#\s@]+(?:[/?#][^\s]*)?$", re.IGNORECASE)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+:~_-]{0,63}$")
_VERSION_PART_RE = re.compile(r"[0-9]+|[A-Za-z]+")

LIST_REQUIRED = ("dc:identifier", "dc:date:created", "dc:date:expires", "hv:version", "hv:endorser", "hv:images")
IMAGE_REQUIRED = ("dc:identifier", "dc:title", "hv:uri", "sl:checksum:sha512", "hv:size", "hv:version")
ENDORSER_REQUIRED = ("hv:dn", "hv:ca")


class ImageListSchemaError(ImageListError):
    """The list does not follow the schema; ``reasons`` holds every problem found."""

    def __init__(self, source, reasons):
        self.source = source
        self.reasons = list(reasons)
        super(ImageListSchemaError, self).__init__("image list %s: %s" % (source, "; ".join(self.reasons)))


def parse_date(value):
    """Seconds since the epoch for a ``YYYY-MM-DDTHH:MM:SSZ`` string; ValueError otherwise."""
    if not isinstance(value, str) or not _DATE_RE.match(value):
        raise ValueError("not a YYYY-MM-DDTHH:MM:SSZ date: %r" % (value,))
    return calendar.timegm(time.strptime(value, DATE_FORMAT))


def format_date(epoch):
    """``YYYY-MM-DDTHH:MM:SSZ`` for seconds since the epoch."""
    return time.strftime(DATE_FORMAT, time.gmtime(int(epoch)))


def version_key(version):
    """A sort key for ``hv:version`` strings: numeric runs compare as numbers, the rest as text."""
    key = []
    for part in _VERSION_PART_RE.findall(str(version)):
        if part.isdigit():
            key.append((1, int(part), ""))
        else:
            key.append((0, 0, part))
    return tuple(key)


def compare_versions(left, right):
    """-1, 0 or 1 as ``left`` is lower than, equal to or higher than ``right``."""
    left_key, right_key = version_key(left), version_key(right)
    if left_key == right_key:
        return 0 if str(left) == str(right) else (-1 if str(left) < str(right) else 1)
    return -1 if left_key < right_key else 1


def _reject_duplicate_keys(pairs):
    result = {}
    if len(pairs) > MAX_KEYS_PER_OBJECT:
        raise ValueError("an object has more than %d keys" % MAX_KEYS_PER_OBJECT)
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key %r" % (key,))
        result[key] = value
    return result


def _depth(value, limit, level=1):
    if level > limit:
        return level
    if isinstance(value, dict):
        return max([level] + [_depth(item, limit, level + 1) for item in value.values()])
    if isinstance(value, list):
        return max([level] + [_depth(item, limit, level + 1) for item in value])
    return level


def _check_strings(value, path, reasons):
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            reasons.append("%s is longer than %d characters" % (path, MAX_STRING_LENGTH))
        if "\x00" in value:
            reasons.append("%s contains a NUL character" % path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if len(key) > 256:
                reasons.append("%s has a key longer than 256 characters" % path)
            _check_strings(item, "%s.%s" % (path, key), reasons)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, "%s[%d]" % (path, index), reasons)


def load_json(data, source, max_bytes=MAX_LIST_BYTES):
    """Decode image-list JSON bytes with every hard limit; raise ImageListError naming the cause."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > max_bytes:
        raise ImageListSchemaError(source, ["larger than the limit of %d bytes" % max_bytes])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageListSchemaError(source, ["not valid UTF-8 (byte %d)" % exc.start])
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        document = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_refuse_constant)
    except RecursionError:
        raise ImageListSchemaError(source, ["nested more deeply than %d levels" % MAX_DEPTH])
    except ValueError as exc:
        raise ImageListSchemaError(source, ["not valid JSON: %s" % exc])
    if _depth(document, MAX_DEPTH) > MAX_DEPTH:
        raise ImageListSchemaError(source, ["nested more deeply than %d levels" % MAX_DEPTH])
    reasons = []
    _check_strings(document, "$", reasons)
    if reasons:
        raise ImageListSchemaError(source, reasons)
    return document


def _refuse_constant(name):
    raise ValueError("%s is not allowed in an image list" % name)


class Endorser(object):
    """``hv:endorser/hv:x509`` of a list: who signed it.

    ``dn`` and ``ca`` are the canonical one-line strings (for display and output); ``dn_name`` and
    ``ca_name`` the names parsed from the signed text (dn.DistinguishedName), which is what comparisons use.
    """

    def __init__(self, dn, ca, email=None, creator=None):
        self.dn_name = parse_dn(dn)
        self.ca_name = parse_dn(ca)
        self.dn = str(self.dn_name)
        self.ca = str(self.ca_name)
        self.email = email
        self.creator = creator

    def to_dict(self):
        """The HEPiX ``hv:x509`` object."""
        result = {"hv:dn": self.dn, "hv:ca": self.ca}
        if self.email is not None:
            result["hv:email"] = self.email
        if self.creator is not None:
            result["dc:creator"] = self.creator
        return result


class Image(object):
    """One ``hv:image``. ``meta`` is the whole object as signed (JMESPath rules read it)."""

    def __init__(self, meta, list_vo=None):
        self.meta = meta
        self.identifier = meta["dc:identifier"].lower()
        self.title = meta.get("dc:title")
        self.uri = meta["hv:uri"]
        self.sha512 = meta["sl:checksum:sha512"]
        self.size = int(meta["hv:size"])
        self.version = str(meta["hv:version"])
        self.arch = meta.get("sl:arch")
        self.os = meta.get("sl:os")
        self.osversion = meta.get("sl:osversion")
        self.hypervisor = meta.get("hv:hypervisor")
        self.format = meta.get("hv:format")
        self.vo = meta.get("ad:vo", list_vo)
        self.expires = meta.get("dc:date:expires")
        self.torrent_uri = meta.get(TORRENT_URI)
        self.torrent_sha256 = meta.get(TORRENT_SHA256)
        self.btih_v1 = meta.get(BTIH_V1)
        self.btih_v2 = meta.get(BTIH_V2)

    def describe(self):
        """``<identifier> <version> (<title>)``: how messages name an image."""
        return "%s %s (%s)" % (self.identifier, self.version, self.title)

    @property
    def file_name(self):
        """The image's file name (:func:`file_name_of`)."""
        return file_name_of(self.uri, self.identifier)

    def expired(self, now):
        """True when the image carries its own expiry date and it has passed."""
        return self.expires is not None and parse_date(self.expires) < now

    def to_dict(self):
        """Plain data for module results: the signed fields plus normalised ones."""
        result = copy.deepcopy(self.meta)
        result["dc:identifier"] = self.identifier
        result["hv:size"] = self.size
        result["hv:version"] = self.version
        if self.vo is not None:
            result.setdefault("ad:vo", self.vo)
        return result


def file_name_of(uri, identifier):
    """An image's file name: the last path component of its hv:uri. Its torrent must carry this name, the
    store keeps the file under it, and the publisher names the .torrent after it."""
    name = unquote(posixpath.basename(urlparse(uri).path))
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ImageListError("image %s: hv:uri %s names no file" % (identifier, uri))
    return name


class ImageList(object):
    """A parsed image list. Construct it with :func:`parse_image_list` or :func:`build_image_list`."""

    def __init__(self, document, source, legacy_unwrapped=False):
        body = document["hv:imagelist"] if "hv:imagelist" in document else document
        self.document = document
        self.body = body
        self.source = source
        self.legacy_unwrapped = legacy_unwrapped
        self.identifier = body["dc:identifier"].lower()
        self.title = body.get("dc:title")
        self.version = str(body["hv:version"])
        self.created = body["dc:date:created"]
        self.expires = body["dc:date:expires"]
        self.uri = body.get("hv:uri")
        self.vo = body.get("ad:vo")
        self.endorsers = [_endorser_from(item) for item in _endorser_items(body["hv:endorser"])]
        self.images = [Image(item, self.vo) for item in _image_items(body["hv:images"])]

    @property
    def created_epoch(self):
        """``dc:date:created`` in seconds since the epoch."""
        return parse_date(self.created)

    @property
    def expires_epoch(self):
        """``dc:date:expires`` in seconds since the epoch."""
        return parse_date(self.expires)

    def metadata(self):
        """List-level fields (without the images) as plain data."""
        return {
            "dc:identifier": self.identifier,
            "dc:title": self.title,
            "dc:description": self.body.get("dc:description"),
            "dc:source": self.body.get("dc:source"),
            "dc:date:created": self.created,
            "dc:date:expires": self.expires,
            "hv:version": self.version,
            "hv:uri": self.uri,
            "ad:vo": self.vo,
            "hv:endorser": [endorser.to_dict() for endorser in self.endorsers],
            "legacy_unwrapped": self.legacy_unwrapped,
        }

    def to_json_bytes(self):
        """The canonical serialisation: wrapped, sorted keys, two-space indent, LF, UTF-8."""
        return serialise(self.document if not self.legacy_unwrapped else {"hv:imagelist": self.body})


def serialise(document):
    """Serialise a list document the one way this collection writes lists."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _endorser_items(value):
    return value if isinstance(value, list) else [value]


def _image_items(value):
    return [item["hv:image"] if isinstance(item, dict) and "hv:image" in item else item for item in value]


def _endorser_from(item):
    x509 = item.get("hv:x509", item)
    return Endorser(x509["hv:dn"], x509["hv:ca"], x509.get("hv:email"), x509.get("dc:creator"))


def _is_string(value):
    return isinstance(value, str)


def _check_date(body, key, where, reasons):
    value = body.get(key)
    try:
        parse_date(value)
    except ValueError:
        reasons.append("%s %s is %r, not a YYYY-MM-DDTHH:MM:SSZ date" % (where, key, value))


# An image's hv:version names a directory of the image store, beside <version>.json, <version>.torrent
# and the ``current`` link: a version that looks like one of those would collide with them.
STORE_RESERVED_VERSIONS = ("current",)
STORE_RESERVED_SUFFIXES = (".json", ".torrent")


def image_version_problem(version):
    """Why ``version`` cannot name an image version in the store, or None."""
    if not _VERSION_RE.match(version) or version in (".", ".."):
        return "is not a version string"
    if version in STORE_RESERVED_VERSIONS or version.endswith(STORE_RESERVED_SUFFIXES):
        return "is reserved by the image store (current, *.json, *.torrent)"
    return None


def _check_version(value, where, reasons, image=False):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        reasons.append("%s hv:version must be a string, not %s" % (where, type(value).__name__))
    elif not _VERSION_RE.match(str(value)):
        reasons.append("%s hv:version %r is not a version string" % (where, value))
    elif image and image_version_problem(str(value)):
        reasons.append("%s hv:version %r %s" % (where, value, image_version_problem(str(value))))


def _check_endorsers(body, reasons):
    value = body.get("hv:endorser")
    items = _endorser_items(value)
    if not items or len(items) > MAX_ENDORSERS:
        reasons.append("hv:endorser must hold 1 to %d endorsers" % MAX_ENDORSERS)
        return
    for index, item in enumerate(items):
        where = "hv:endorser[%d]" % index
        if not isinstance(item, dict):
            reasons.append("%s is not an object" % where)
            continue
        x509 = item.get("hv:x509", item)
        if not isinstance(x509, dict):
            reasons.append("%s.hv:x509 is not an object" % where)
            continue
        for key in ENDORSER_REQUIRED:
            if key not in x509:
                reasons.append("%s lacks %s" % (where, key))
            elif not _is_string(x509[key]):
                reasons.append("%s %s must be a string" % (where, key))
            else:
                try:
                    canonical_dn(x509[key])
                except DNError as exc:
                    reasons.append("%s %s: %s" % (where, key, exc))


def _check_size(value, where, reasons):
    if isinstance(value, bool):
        reasons.append("%s hv:size must be an integer, not a boolean" % where)
    elif isinstance(value, int):
        if value < 0:
            reasons.append("%s hv:size %d is negative" % (where, value))
    elif isinstance(value, str):
        if not re.match(r"^[0-9]{1,19}$", value):
            reasons.append("%s hv:size %r is not a non-negative integer" % (where, value))
    else:
        reasons.append("%s hv:size must be an integer, not %s" % (where, type(value).__name__))


def _check_image(index, item, reasons, seen):
    where = "image %d" % index
    if not isinstance(item, dict):
        reasons.append("%s is not an object" % where)
        return
    identifier = item.get("dc:identifier")
    if _is_string(identifier):
        where = "image %s" % identifier
    for key in IMAGE_REQUIRED:
        if key not in item:
            reasons.append("%s lacks %s" % (where, key))
    if "dc:identifier" in item:
        if not _is_string(identifier) or not UUID_RE.match(identifier):
            reasons.append("%s dc:identifier %r is not a UUID" % (where, identifier))
        elif identifier.lower() in seen:
            reasons.append("duplicate image identifier %s" % identifier.lower())
        else:
            seen.add(identifier.lower())
    for key in ("dc:title", "hv:uri", "dc:description", "sl:arch", "sl:os", "sl:osversion", "hv:hypervisor",
                "hv:format", "sl:comments", "ad:vo", TORRENT_URI):
        if key in item and not _is_string(item[key]):
            reasons.append("%s %s must be a string, not %s" % (where, key, type(item[key]).__name__))
    if "sl:checksum:sha512" in item:
        checksum = item["sl:checksum:sha512"]
        if not _is_string(checksum) or not SHA512_RE.match(checksum):
            reasons.append("%s sl:checksum:sha512 is not 128 lower-case hex digits" % where)
    if "hv:size" in item:
        _check_size(item["hv:size"], where, reasons)
    if "hv:version" in item:
        _check_version(item["hv:version"], where, reasons, image=True)
    if "dc:date:expires" in item:
        _check_date(item, "dc:date:expires", where, reasons)
    if _is_string(item.get(TORRENT_URI)) and not _TORRENT_URL_RE.match(item[TORRENT_URI]):
        reasons.append("%s %s %r is not an absolute https:// (or http://) URL; a local path or another scheme is refused"
                       % (where, TORRENT_URI, item[TORRENT_URI]))
    for key, pattern in ((TORRENT_SHA256, HEX64_RE), (BTIH_V1, HEX40_RE), (BTIH_V2, HEX64_RE)):
        if key in item and (not _is_string(item[key]) or not pattern.match(item[key])):
            reasons.append("%s %s is malformed" % (where, key))
    if PIECE_SIZE in item:
        piece = item[PIECE_SIZE]
        if isinstance(piece, bool) or not isinstance(piece, int) or piece < 16384 or piece & (piece - 1):
            reasons.append("%s %s must be a power of two of at least 16384" % (where, PIECE_SIZE))


def schema_reasons(document):
    """Every schema problem of a decoded list document (empty when it is well formed)."""
    reasons = []
    if not isinstance(document, dict):
        return ["the document is not a JSON object"]
    if "hv:imagelist" in document:
        if len(document) != 1:
            reasons.append("unexpected keys beside hv:imagelist: %s" % ", ".join(sorted(k for k in document if k != "hv:imagelist")))
        body = document["hv:imagelist"]
        if not isinstance(body, dict):
            return reasons + ["hv:imagelist is not an object"]
    else:
        body = document
    for key in LIST_REQUIRED:
        if key not in body:
            reasons.append("lacks %s" % key)
    if "dc:identifier" in body and (not _is_string(body["dc:identifier"]) or not UUID_RE.match(body["dc:identifier"])):
        reasons.append("dc:identifier %r is not a UUID" % (body["dc:identifier"],))
    for key in ("dc:date:created", "dc:date:expires"):
        if key in body:
            _check_date(body, key, "list", reasons)
    if "hv:version" in body:
        _check_version(body["hv:version"], "list", reasons)
    for key in ("dc:title", "dc:description", "dc:source", "hv:uri", "ad:vo"):
        if key in body and not _is_string(body[key]):
            reasons.append("list %s must be a string" % key)
    if "hv:endorser" in body:
        if isinstance(body["hv:endorser"], (dict, list)):
            _check_endorsers(body, reasons)
        else:
            reasons.append("hv:endorser must be an object or an array")
    images = body.get("hv:images")
    if "hv:images" in body:
        if not isinstance(images, list):
            reasons.append("hv:images must be an array")
        elif len(images) > MAX_IMAGES:
            reasons.append("holds %d images, more than the limit of %d" % (len(images), MAX_IMAGES))
        else:
            seen = set()
            for index, item in enumerate(_image_items(images)):
                _check_image(index, item, reasons, seen)
    return reasons


def parse_image_list(data, source, max_bytes=MAX_LIST_BYTES):
    """Parse image-list JSON bytes into an :class:`ImageList`; ImageListSchemaError lists every problem."""
    document = load_json(data, source, max_bytes)
    reasons = schema_reasons(document)
    if reasons:
        raise ImageListSchemaError(source, reasons)
    return ImageList(document, source, legacy_unwrapped="hv:imagelist" not in document)


def build_image_list(metadata, endorser, images, version, created, expires):
    """Assemble a list document from plain data (the endorser side) and validate it.

    ``metadata`` holds list-level ``dc:*``/``hv:uri``/``ad:*`` fields, ``endorser`` the ``hv:x509``
    object, ``images`` the image objects. Returns an :class:`ImageList`.
    """
    body = dict(metadata)
    body["hv:version"] = str(version)
    body["dc:date:created"] = format_date(created)
    body["dc:date:expires"] = format_date(expires)
    body["hv:endorser"] = {"hv:x509": dict(endorser)}
    body["hv:images"] = [{"hv:image": dict(image)} for image in images]
    document = {"hv:imagelist": body}
    reasons = schema_reasons(document)
    if reasons:
        raise ImageListSchemaError(body.get("dc:identifier", "(new list)"), reasons)
    return ImageList(document, body.get("dc:identifier", "(new list)"))
