# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The endorser side: from a catalogue source to a signed image list.

A catalogue source is plain data (YAML in a file, or a dict):

    list:                       # list-level HEPiX fields
      dc:identifier: 2c8b6f3e-...
      dc:title: Example images
      hv:uri: https://repo.example.org/lists/example.list
    endorser:                   # optional hv:x509 extras; hv:dn and hv:ca come from the certificate
      dc:creator: Example Endorser
      hv:email: images@example.org
    images:
      - dc:identifier: 6f1e...
        dc:title: Debian 12 base
        hv:uri: https://repo.example.org/images/debian12.qcow2
        hv:version: "20261101"
        file: /srv/images/debian12.qcow2   # hashed here; or give sl:checksum:sha512 and hv:size

``hv:version`` of the list is bumped only when the content changes, so a second run with the same
source changes nothing; the list is re-signed (and bumped) when it is about to expire.

The signer keeps its own record of the last version it published of each list and the sha256 of
that payload (:class:`PublisherState`, a small JSON file). A missing or unreadable published list
therefore never restarts the list at version 1, which every hypervisor would refuse as a rollback:
signing continues above the recorded version, and publishing a version lower than the recorded
one is refused.
"""

from __future__ import annotations

import email
import hashlib
import json
import os
import posixpath
import time

from ansible_collections.vmic.fleet.plugins.module_utils import torrent
from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_input, read_limited, require_directory, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.crypto_dep import serialization
from ansible_collections.vmic.fleet.plugins.module_utils.dn import canonical_dn, name_from_x509, parse_dn
from ansible_collections.vmic.fleet.plugins.module_utils.errors import ImageListError, SignatureError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_ENVELOPE_BYTES, MAX_TORRENT_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import (
    BTIH_V1, BTIH_V2, MAX_LIST_BYTES, PIECE_SIZE, TORRENT_SHA256, TORRENT_URI, build_image_list, format_date, parse_image_list)
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import file_digest
from ansible_collections.vmic.fleet.plugins.module_utils.smime import check_signing_certificate, load_certificate, load_private_key, sign_detached

try:
    from urllib.parse import quote, unquote, urlparse
except ImportError:  # pragma: no cover - Python 2 is not supported
    raise

MAX_CATALOGUE_BYTES = 4 * 1024 * 1024
MAX_CERT_BYTES = 256 * 1024
MAX_SIGNER_STATE_BYTES = 4 * 1024 * 1024
SIGNER_STATE_SUFFIX = ".signer-state.json"
# Fields the signer computes; a catalogue may not set them for the list.
COMPUTED_LIST_FIELDS = ("hv:version", "dc:date:created", "dc:date:expires", "hv:endorser", "hv:images")


def hash_file(path):
    """sha512 (hex) and size of an image file; ImageListError naming the file when it cannot be read."""
    try:
        return file_digest(path)
    except OSError as exc:
        raise ImageListError("image file %s: %s" % (path, exc.strerror or exc))


def load_catalogue(path):
    """Read a YAML catalogue source with a size limit."""
    try:
        import yaml  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise VmicError("catalogue %s: PyYAML is needed to read catalogue files" % path)
    data = read_input(path, MAX_CATALOGUE_BYTES, "catalogue %s" % path)
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ImageListError("catalogue %s: not valid YAML: %s" % (path, exc))


def signed_content(envelope):
    """The signed part of an S/MIME envelope we wrote earlier (for comparison only, never trusted)."""
    message = email.message_from_bytes(envelope)
    if not message.is_multipart():
        return None
    parts = message.get_payload()
    if not parts:
        return None
    payload = parts[0].get_payload(decode=True)
    return payload


def _normalise_images(images, where, hasher, image_hook=None):
    if not isinstance(images, list) or not images:
        raise ImageListError("catalogue %s: images must be a non-empty list" % where)
    result = []
    for index, spec in enumerate(images):
        if not isinstance(spec, dict):
            raise ImageListError("catalogue %s: image %d is not a mapping" % (where, index))
        image = dict((key, value) for key, value in spec.items() if key != "file")
        if "file" in spec:
            sha512, size = hasher(spec["file"])
            for key, value in (("sl:checksum:sha512", sha512), ("hv:size", size)):
                if key in spec and str(spec[key]) != str(value):
                    raise ImageListError("catalogue %s: image %s: %s %s given, but file %s has %s"
                                         % (where, spec.get("dc:identifier", index), key, spec[key], spec["file"], value))
            image["sl:checksum:sha512"] = sha512
            image["hv:size"] = size
        if "hv:version" in image:
            image["hv:version"] = str(image["hv:version"])
        if image_hook is not None:
            image = image_hook(image, spec.get("file"))
        result.append(image)
    return result


class HashCache(object):
    """sha512 of image files by path, size and mtime, so that an unchanged image is not hashed again."""

    def __init__(self, path):
        self.path = path
        self.entries = {}
        self.dirty = False
        if path and os.path.exists(path):
            try:
                self.entries = json.loads(read_limited(path, 16 * 1024 * 1024).decode("utf-8")).get("files", {})
            except (ValueError, UnicodeDecodeError, AttributeError, VmicError):
                self.entries = {}

    def hash(self, path):
        """sha512 and size of ``path``, from the cache when the file did not change."""
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise ImageListError("image file %s: %s" % (path, exc.strerror or exc))
        key = os.path.abspath(path)
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return entry["sha512"], entry["size"]
        sha512, size = hash_file(path)
        self.entries[key] = {"size": size, "mtime_ns": stat.st_mtime_ns, "sha512": sha512}
        self.dirty = True
        return sha512, size

    def save(self):
        """Write the cache atomically (when it has a path and changed)."""
        if self.path and self.dirty:
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o750)
            write_atomic(self.path, json.dumps({"files": self.entries}, sort_keys=True).encode("utf-8"), 0o640)
            self.dirty = False


class TorrentPublisher(object):
    """Makes the hybrid v1+v2 .torrent of each image file and adds its signed fields to the image.

    The torrent's file name is the last component of the image's ``hv:uri``, its web seed that URL,
    its announce list the site trackers. ``<torrent_dir>/<name>.torrent`` is written atomically; an
    existing torrent is reused when it describes the same file (same bytes for the same input).
    """

    def __init__(self, torrent_dir, base_url, trackers=(), piece_size=4 * 1024 * 1024, check_mode=False):
        self.torrent_dir = torrent_dir
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.trackers = list(trackers)
        self.piece_size = piece_size
        self.check_mode = check_mode
        self.written = []
        self.torrents = []    # every torrent of the list: written or reused

    def __call__(self, image, path):
        if path is None:
            return image
        name = unquote(posixpath.basename(urlparse(image["hv:uri"]).path))
        if not name:
            raise ImageListError("image %s: hv:uri %s names no file" % (image.get("dc:identifier"), image["hv:uri"]))
        target = os.path.join(self.torrent_dir, name + ".torrent")
        meta = None
        if os.path.exists(target):
            try:
                existing = torrent.parse_torrent(read_limited(target, MAX_TORRENT_BYTES))
                if (existing.name == name and existing.size == int(image["hv:size"]) and existing.piece_size == self.piece_size
                        and list(existing.trackers) == self.trackers and list(existing.web_seeds) == [image["hv:uri"]]
                        and os.path.getmtime(target) >= os.path.getmtime(path)):
                    meta = existing
            except VmicError:
                meta = None
        if meta is None:
            meta = torrent.make_torrent(path, name=name, piece_size=self.piece_size, web_seeds=[image["hv:uri"]], trackers=self.trackers)
            if not self.check_mode:
                if not os.path.isdir(self.torrent_dir):
                    os.makedirs(self.torrent_dir, mode=0o755)
                write_atomic(target, meta.data, 0o644)
            self.written.append(target)
        self.torrents.append(target)
        image = dict(image)
        image.update({
            TORRENT_URI: self.base_url + quote(name) + ".torrent",
            TORRENT_SHA256: meta.sha256,
            BTIH_V1: meta.info_hash_v1,
            BTIH_V2: meta.info_hash_v2,
            PIECE_SIZE: meta.piece_size,
        })
        return image


def payload_sha256(image_list):
    """sha256 (hex) of the signed payload of a list."""
    return hashlib.sha256(image_list.to_json_bytes()).hexdigest()


def default_state_file(dest):
    """The signer state beside a signed list: ``<dir>/.<name>.signer-state.json``."""
    directory, name = os.path.split(os.path.abspath(dest))
    return os.path.join(directory, "." + name + SIGNER_STATE_SUFFIX)


class PublisherState(object):
    """The last version this signer published of each list (by list UUID) and the sha256 of its payload.

    The file is JSON ``{"lists": {uuid: {"version": "7", "payload_sha256": ..., "published": date}}}``,
    written atomically. A missing file is an empty record; an unreadable one is refused (signing
    without it could go back to a version hypervisors already hold).
    """

    def __init__(self, path):
        self.path = path
        self.lists = {}
        self.load()

    def load(self):
        """(Re-)read the file; VmicError naming it when it exists but cannot be used."""
        self.lists = {}
        if not os.path.exists(self.path):
            return
        try:
            document = json.loads(read_limited(self.path, MAX_SIGNER_STATE_BYTES, "signer state %s" % self.path).decode("utf-8"))
            lists = document["lists"]
            for identifier, record in lists.items():
                if not str(record["version"]).isdigit() or not isinstance(record["payload_sha256"], str):
                    raise ValueError("list %s: malformed record" % identifier)
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise VmicError("signer state %s cannot be read (%s); refusing to sign, since without it a list could go back to a "
                            "version hypervisors already hold: restore it, or remove it after checking the published versions"
                            % (self.path, exc))
        self.lists = dict((identifier.lower(), record) for identifier, record in lists.items())

    def last_version(self, identifier):
        """The last published version (int) of list ``identifier`` and its payload sha256, or (None, None)."""
        record = self.lists.get(identifier.lower())
        if record is None:
            return None, None
        return int(record["version"]), record["payload_sha256"]

    def check(self, image_list, where):
        """Refuse to publish ``image_list`` at a version lower than the recorded one (or the same with other bytes)."""
        last, digest = self.last_version(image_list.identifier)
        if last is None:
            return
        version = int(image_list.version) if image_list.version.isdigit() else None
        if version is None or version < last or (version == last and payload_sha256(image_list) != digest):
            raise ImageListError("image list %s (%s): refusing to publish hv:version %s, lower than version %d last published "
                                 "(signer state %s); hypervisors would refuse it as a rollback"
                                 % (image_list.identifier, where, image_list.version, last, self.path))

    def record(self, image_list, now=None):
        """Record ``image_list`` as published (atomic write)."""
        self.lists[image_list.identifier] = {"version": image_list.version, "payload_sha256": payload_sha256(image_list),
                                             "published": format_date(int(time.time() if now is None else now))}
        data = (json.dumps({"lists": self.lists}, sort_keys=True, indent=2) + "\n").encode("utf-8")
        write_atomic(self.path, data, 0o640)


class SignPlan(object):
    """What signing would do: the new envelope (if any) and why."""

    def __init__(self):
        self.changed = False
        self.reason = None
        self.envelope = None
        self.image_list = None
        self.previous_version = None
        self.previous = None


def _load_private_key_pem(key_pem, passphrase, where):
    key = load_private_key(key_pem, passphrase or None, "private key %s" % where)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _certificate_names(cert_pem, where):
    cert = load_certificate(cert_pem, "certificate %s" % where)
    return name_from_x509(cert.subject), name_from_x509(cert.issuer)


def plan_signed_list(catalogue, where, cert_path, key_path, existing=None, key_passphrase=None, chain_paths=(),
                     digest="sha256", lifetime_days=28, renew_before_days=7, now=None, hasher=hash_file, image_hook=None,
                     state=None):
    """Compute the signed list for a catalogue; sign only when the content changed or renewal is due.

    ``existing`` is the envelope currently at the destination (bytes) or None.
    ``image_hook(image, file_path)`` may add fields (the torrent fields) to each normalised image.
    ``state`` (a :class:`PublisherState`) keeps the version from going back: the new version is above
    both the existing list's and the last published one, and an existing list that is not the one last
    published (older, or other bytes under the same version) is signed again above it.
    """
    now = int(time.time() if now is None else now)
    if not isinstance(catalogue, dict):
        raise ImageListError("catalogue %s: must be a mapping with list, endorser and images" % where)
    unknown = sorted(set(catalogue) - {"list", "endorser", "images"})
    if unknown:
        raise ImageListError("catalogue %s: unknown keys %s" % (where, ", ".join(unknown)))
    metadata = dict(catalogue.get("list") or {})
    bad = [key for key in COMPUTED_LIST_FIELDS if key in metadata]
    if bad:
        raise ImageListError("catalogue %s: list fields %s are computed by the signer" % (where, ", ".join(bad)))
    images = _normalise_images(catalogue.get("images"), where, hasher, image_hook)

    # Inputs are named in errors: a missing certificate is reported against the certificate, not the list.
    cert_pem = read_input(cert_path, MAX_CERT_BYTES, "certificate %s" % cert_path)
    key_pem = _load_private_key_pem(read_input(key_path, MAX_CERT_BYTES, "private key %s" % key_path), key_passphrase, key_path)
    chain_pems = [read_input(path, MAX_CERT_BYTES, "chain certificate %s" % path) for path in chain_paths]
    problems = check_signing_certificate(cert_pem, key_pem)
    if problems:
        raise SignatureError("certificate %s cannot sign image lists: %s" % (cert_path, "; ".join(problems)))
    subject, issuer = _certificate_names(cert_pem, cert_path)
    endorser = dict(catalogue.get("endorser") or {})
    for key, actual in (("hv:dn", subject), ("hv:ca", issuer)):
        if key in endorser and parse_dn(endorser[key]) != actual:
            raise SignatureError("certificate %s is not the list's endorser: its %s is %s, the catalogue says %s"
                                 % (cert_path, "subject" if key == "hv:dn" else "issuer", actual, canonical_dn(endorser[key])))
    endorser["hv:dn"], endorser["hv:ca"] = str(subject), str(issuer)

    plan = SignPlan()
    version = 1
    last, last_digest = (None, None)
    if state is not None and isinstance(metadata.get("dc:identifier"), str):
        last, last_digest = state.last_version(metadata["dc:identifier"])
    if existing is not None:
        previous = None
        try:
            content = signed_content(existing)
            previous = parse_image_list(content, "existing %s" % where, MAX_LIST_BYTES) if content else None
        except (ImageListError, ValueError):
            previous = None
        if previous is not None:
            plan.previous_version = previous.version
            plan.previous = previous
            if not previous.version.isdigit():
                raise ImageListError("existing list %s: hv:version %r is not an integer; cannot bump it" % (where, previous.version))
            version = int(previous.version) + 1
            candidate = build_image_list(metadata, endorser, images, previous.version, previous.created_epoch, previous.expires_epoch)
            same = candidate.to_json_bytes() == previous.to_json_bytes()
            renew_due = previous.expires_epoch - now < renew_before_days * 86400
            behind = last is not None and (int(previous.version) < last
                                           or (int(previous.version) == last and payload_sha256(previous) != last_digest))
            if same and not renew_due and not behind:
                plan.image_list = previous
                plan.reason = "unchanged (version %s, expires %s)" % (previous.version, previous.expires)
                return plan
            if behind:
                plan.reason = ("the list at the destination (version %s) is not the one last published (version %d, signer state %s)"
                               % (previous.version, last, state.path))
            else:
                plan.reason = "renewal due: expires %s" % previous.expires if same else "content changed"
        else:
            plan.reason = "existing file is not a list this signer can read; replaced"
    else:
        plan.reason = "new list"
    if last is not None and version <= last:
        version = last + 1
        if plan.previous is None:
            plan.reason += "; continuing above version %d last published (signer state %s)" % (last, state.path)
    plan.image_list = build_image_list(metadata, endorser, images, version, now, now + lifetime_days * 86400)
    if state is not None:
        state.check(plan.image_list, where)
    plan.envelope = sign_detached(plan.image_list.to_json_bytes(), cert_pem, key_pem, digest=digest, chain_pems=chain_pems)
    plan.changed = True
    return plan


def image_summary(image_list):
    """A short, stable view of a list for diffs: version and one line per image."""
    lines = ["hv:version: %s" % image_list.version]
    for image in sorted(image_list.images, key=lambda item: item.identifier):
        lines.append("%s %s %s %s" % (image.identifier, image.version, image.size, image.sha512[:16]))
    return "\n".join(lines) + "\n"


def existing_envelope(path):
    """The envelope at ``path`` or None."""
    if not os.path.exists(path):
        return None
    return read_input(path, MAX_ENVELOPE_BYTES, "signed list %s" % path)


def publish_signed_list(dest, plan, state=None, mode=0o644, now=None):
    """Write a changed plan's envelope to ``dest`` atomically, recording its version in ``state`` first.

    The state is read again and checked just before the write, so a stale plan (another run published
    a higher version meanwhile) is refused. The record is written before the list, so that it is never
    behind what was published.
    """
    if not plan.changed:
        if state is not None and plan.image_list is not None and plan.image_list.version.isdigit():
            # Adopt a list published before the state existed (or by an older signer).
            last, _digest = state.last_version(plan.image_list.identifier)
            if last is None or int(plan.image_list.version) > last:
                state.record(plan.image_list, now)
        return
    require_directory(dest)  # before the state is written, so the error names the list
    if state is not None:
        state.load()
        state.check(plan.image_list, dest)
        state.record(plan.image_list, now)
    write_atomic(dest, plan.envelope, mode)
