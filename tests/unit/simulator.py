# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An in-memory image repository for tests of the sync pipeline, as python-tuf's RepositorySimulator is for TUF.

    repo = RepositorySimulator(pki, directory)
    debian = repo.image(DEBIAN, "1", title="Debian")        # deterministic bytes, a real hybrid torrent, served
    envelope = repo.publish(URL, pki.good, LIST_ID, [debian], version="1")
    repo.fetch(url, max_bytes, ...)          # fetch.fetch_bytes's signature: what the host downloads
    repo.swarm(info_hash_v1)                 # the bytes the peers of a torrent deliver (fake_engine.FakeEngine)

Publishing is real: each image file is hashed into a single-file hybrid torrent by the endorser's own
publish.TorrentPublisher (libtorrent), the list is assembled and checked by imagelist.build_image_list and
signed by smime.sign_detached with an identity of the test PKI (pki.py).

Tampering, as a mirror or a network attacker can: ``serve(url, data)`` (other bytes, a replaced torrent, an
older list), ``serve_endless(url)``, ``unreachable(url)``, ``forged_torrent(image)`` (a real torrent of other
bytes with the image's name and size) and ``poison(image)`` (the swarm delivers other bytes for its torrent).

The fetch enforces the caller's ``max_bytes`` as the real one does, reading chunk by chunk, and records what
each fetch asked for and read (``fetched``), so that tests check the limits the pipeline really passes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time

from ansible_collections.vmic.fleet.plugins.module_utils.errors import FetchError, LimitError
from ansible_collections.vmic.fleet.plugins.module_utils.fetch import CHUNK, is_url
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import BTIH_V1, TORRENT_URI, build_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.publish import TorrentPublisher
from ansible_collections.vmic.fleet.plugins.module_utils.smime import sign_detached
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent

BASE_URL = "https://repo.test"
PIECE_SIZE = 16 * 1024
DAY = 86400


def image_bytes(label, size):
    """``size`` deterministic bytes for ``label`` (the same in every run)."""
    return hashlib.shake_256(label.encode("utf-8")).digest(size)


def flipped(data):
    """Other bytes of the same length (every byte changed)."""
    return bytes(byte ^ 0x5A for byte in data)


class SimImage(object):
    """One published image: its bytes, its signed ``hv:image`` fields (with the vmic:torrent fields) and its torrent."""

    def __init__(self, fields, data, torrent, path):
        self.fields = fields
        self.data = data
        self.torrent = torrent
        self.path = path
        self.identifier = fields["dc:identifier"]
        self.version = fields["hv:version"]
        self.name = os.path.basename(path)
        self.torrent_url = fields[TORRENT_URI]
        self.info_hash_v1 = fields[BTIH_V1]

    def __repr__(self):
        return "SimImage(%s %s %s)" % (self.identifier, self.version, self.name)


class _Response(object):
    def __init__(self, data=None, endless=False, unreachable=False):
        self.data = data
        self.endless = endless
        self.unreachable = unreachable

    def chunks(self):
        if self.endless:
            return itertools.repeat(b"\0" * CHUNK)
        return (self.data[offset:offset + CHUNK] for offset in range(0, len(self.data), CHUNK))


class RepositorySimulator(object):
    """See the module documentation."""

    def __init__(self, pki, directory, base_url=BASE_URL):
        self.pki = pki
        self.directory = str(directory)
        self.base_url = base_url
        self.responses = {}
        self.peers = {}          # info_hash_v1 -> the bytes the swarm delivers
        self.fetched = []        # {url, max_bytes, what, read} of every fetch

    # -- the endorser's side ---------------------------------------------------------------------

    def image(self, identifier, version, title="img", size=40 * 1024 + 123, name=None, data=None, **fields):
        """Make an image file (deterministic bytes unless ``data``), its torrent, and serve the torrent.

        Returns a :class:`SimImage`; its ``fields`` go into a list with :meth:`publish`.
        """
        data = image_bytes("%s %s" % (identifier, version), size) if data is None else data
        name = name or "%s-%s.img" % (title.lower().replace(" ", "-"), version)
        where = os.path.join(self.directory, "images", identifier, version)
        os.makedirs(where)
        path = os.path.join(where, name)
        with open(path, "wb") as handle:
            handle.write(data)
        entry = {"dc:identifier": identifier, "dc:title": title, "hv:version": version, "hv:size": len(data),
                 "sl:checksum:sha512": hashlib.sha512(data).hexdigest(), "hv:uri": "%s/images/%s/%s/%s" % (self.base_url, identifier, version, name),
                 "sl:arch": "x86_64"}
        entry.update(fields)
        publisher = TorrentPublisher(os.path.join(self.directory, "torrents", identifier, version),
                                     "%s/torrents/%s/%s/" % (self.base_url, identifier, version), piece_size=PIECE_SIZE)
        entry = publisher(entry, path)
        with open(publisher.written[0], "rb") as handle:
            torrent = handle.read()
        image = SimImage(entry, data, torrent, path)
        self.serve(image.torrent_url, torrent)
        self.peers[image.info_hash_v1] = data
        return image

    def document(self, signer, list_id, images, version, url, created=None, expires=None):
        """The list document (as an imagelist.ImageList) of ``images`` signed for by ``signer``."""
        now = time.time()
        metadata = {"dc:identifier": list_id, "dc:title": "Site list", "hv:uri": url}
        endorser = {"hv:dn": signer.dn, "hv:ca": signer.issuer_dn, "dc:creator": signer.name}
        return build_image_list(metadata, endorser, [image.fields for image in images], version,
                                now - 3600 if created is None else created, now + 30 * DAY if expires is None else expires)

    def publish(self, url, signer, list_id, images, version, created=None, expires=None):
        """Sign a list of ``images`` with the identity ``signer``, serve it at ``url``; returns the envelope."""
        content = self.document(signer, list_id, images, version, url, created, expires).to_json_bytes()
        envelope = sign_detached(content, signer.cert_pem, signer.key_pem, chain_pems=signer.chain_pems)
        self.serve(url, envelope)
        return envelope

    # -- tampering -------------------------------------------------------------------------------

    def serve(self, url, data):
        """Serve ``data`` at ``url`` from now on (a list, a torrent, or anything else a mirror chooses)."""
        self.responses[url] = _Response(bytes(data))

    def serve_endless(self, url):
        """Serve a body that never ends at ``url``."""
        self.responses[url] = _Response(endless=True)

    def unreachable(self, url):
        """The host cannot connect to ``url`` any more."""
        self.responses[url] = _Response(unreachable=True)

    def forged_torrent(self, image):
        """A real hybrid torrent of other bytes with ``image``'s file name, size and web seed (not the signed one)."""
        where = os.path.join(self.directory, "forged", image.identifier, image.version)
        os.makedirs(where, exist_ok=True)
        path = os.path.join(where, image.name)
        other = flipped(image.data)
        with open(path, "wb") as handle:
            handle.write(other)
        meta = make_torrent(path, piece_size=PIECE_SIZE, web_seeds=[image.fields["hv:uri"]])
        self.peers.setdefault(meta.info_hash_v1, other)
        return meta.data

    def poison(self, image):
        """The peers of ``image``'s torrent deliver other bytes of the same size."""
        self.peers[image.info_hash_v1] = flipped(image.data)

    # -- the host's side -------------------------------------------------------------------------

    def swarm(self, info_hash_v1):
        """The bytes the peers of a torrent deliver, or None when no peer has them."""
        return self.peers.get(info_hash_v1)

    def fetch(self, url, max_bytes, timeout=30, ca_file=None, allow_http=False, what="object", allow_local=True):  # pylint: disable=unused-argument
        """fetch.fetch_bytes over this repository: the same refusals (scheme, local path, size limit, unreachable)."""
        record = {"url": url, "max_bytes": max_bytes, "what": what, "read": 0}
        self.fetched.append(record)
        if not is_url(url):
            why = "a local path is refused here; give an https:// URL" if not allow_local else "no such file"
            raise FetchError("%s %s: %s" % (what, url, why))
        if url.startswith("http://") and not allow_http:
            raise FetchError("%s %s: plain HTTP is refused (use https:// or allow it explicitly)" % (what, url))
        response = self.responses.get(url)
        if response is None:
            raise FetchError("%s %s: HTTP 404 Not Found" % (what, url))
        if response.unreachable:
            raise FetchError("%s %s: [Errno 111] Connection refused" % (what, url))
        chunks = []
        for chunk in response.chunks():
            record["read"] += len(chunk)
            if record["read"] > max_bytes:
                raise LimitError("%s %s: more than the limit of %d bytes" % (what, url, max_bytes))
            chunks.append(chunk)
        return b"".join(chunks)

    def fetches(self, url):
        """The records of every fetch of ``url``."""
        return [record for record in self.fetched if record["url"] == url]
