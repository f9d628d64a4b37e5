# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one definition of each identifier kind and each size limit shared across files.

Each pattern matches a whole string (``\\Z``: a trailing newline is refused, which ``$`` would accept).

Identifier kinds (every other module imports these, none defines its own):

- a UUID (``dc:identifier`` of lists and images): :data:`UUID_RE` accepts either case as signed,
  :data:`UUID_LOWER_RE` only the canonical lower-case form used in file names;
- 40 hex digits: a BitTorrent v1 info-hash, also the engines' key for a torrent;
- 64 hex digits: a SHA-256 (the torrent file's digest, a v2 info-hash, a certificate fingerprint);
- 128 hex digits: the SHA-512 of an image;
- an endorser's name in the site registry (also a directory name in the list-state store).

Size limits that more than one file enforces live here too, so that they cannot disagree.
"""

from __future__ import annotations

import re

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

UUID_RE = re.compile(r"^%s\Z" % _UUID, re.IGNORECASE)
UUID_LOWER_RE = re.compile(r"^%s\Z" % _UUID)
HEX40_RE = re.compile(r"^[0-9a-f]{40}\Z")
HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
SHA512_RE = re.compile(r"^[0-9a-f]{128}\Z")
MAX_ENDORSER_NAME = 128
ENDORSER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,%d}\Z" % (MAX_ENDORSER_NAME - 1))
# An approved-set key: ``<endorser>/<image uuid>``, or ``*/<uuid>`` for any endorser (earlier releases).
IDENTITY_RE = re.compile(r"^(?:\*|[A-Za-z0-9][A-Za-z0-9._-]{0,%d})/%s\Z" % (MAX_ENDORSER_NAME - 1, _UUID))

# The largest signed image list (the S/MIME envelope) fetched, read or verified anywhere; the JSON
# inside is held to imagelist.MAX_LIST_BYTES.
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
# The largest .torrent file read, fetched, written or accepted from an engine.
MAX_TORRENT_BYTES = 10 * 1024 * 1024


def is_uuid(value):
    """True for a UUID string in either case."""
    return isinstance(value, str) and UUID_RE.match(value) is not None


def is_lower_uuid(value):
    """True for a UUID string in its canonical lower-case form (the form used in file names)."""
    return isinstance(value, str) and UUID_LOWER_RE.match(value) is not None


def is_hex40(value):
    """True for 40 lower-case hex digits (a v1 info-hash, an engine key)."""
    return isinstance(value, str) and HEX40_RE.match(value) is not None


def is_hex64(value):
    """True for 64 lower-case hex digits (a SHA-256, a v2 info-hash)."""
    return isinstance(value, str) and HEX64_RE.match(value) is not None


def is_endorser_name(value):
    """True for a name the site registry allows for an endorser (safe as a directory name)."""
    return isinstance(value, str) and ENDORSER_NAME_RE.match(value) is not None and value not in (".", "..")
