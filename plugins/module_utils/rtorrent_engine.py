# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``Engine`` interface on top of rtorrent 0.9.x, driven over XML-RPC on its SCGI unix socket.

rtorrent (``network.scgi.open_local = <socket>``) answers one SCGI request per connection: a
netstring of CGI headers (``CONTENT_LENGTH`` first, then ``SCGI: 1``), a comma, the XML-RPC body;
the reply is CGI headers (``Status:``, ``Content-Type:``), a blank line and the XML-RPC response.
``xmlrpc.client`` only (de)serialises; the transport below frames the request and sends it with the
engine package's unix-socket helper (``_engine.protocol.unix_request``: one deadline, a size limit on
the response).

Keys are v1 info-hashes in lower case (rtorrent's ``d.hash`` is upper case). rtorrent only knows
BitTorrent v1: it joins the v1 swarm of a hybrid torrent and ignores the v2 part. The v2 info-hash
and the time of ``add`` are kept in the download's custom fields (``vmic_v2``, ``vmic_added_at``),
so ``status`` reports them like the libtorrent engine does.

Approximations in ``status`` (rtorrent 0.9.8 does not expose the exact counters):

* ``bytes_from_peers`` = ``d.down.total`` (payload received this session); rtorrent has no web seeds,
  so ``bytes_from_web_seed`` is 0;
* ``bytes_from_seeds`` = bytes received from the peers connected right now that hold every piece
  (``p.down_total`` of peers whose ``p.completed_percent`` is 100); bytes from seeds that have
  disconnected are not counted, so this is a lower bound;
* ``hashfail_count`` and ``banned_peers`` are 0 (not counted by rtorrent);
* ``completed_at`` = ``d.timestamp.finished`` (0 = unknown: None); ``added_at`` comes from the custom
  field written by ``add`` (``d.load_date`` for downloads added by other means);
* ``state``: ``checking`` while hashing, ``error`` when rtorrent stopped the download with a message
  that is not a tracker message, ``paused`` when stopped, else ``seeding``/``downloading``.

``add(seed_mode=True)`` gives rtorrent fast-resume data (``libtorrent_resume``: every chunk done,
the file's size and mtime) so it seeds the existing file without hashing it first; rtorrent uses
that data only while the file's mtime and size are those recorded, otherwise it hashes the file.
"""

from __future__ import annotations

import errno
import os
import re
import time
import xmlrpc.client
from stat import S_ISREG

from ansible_collections.vmic.fleet.plugins.module_utils._engine.protocol import MAX_RESPONSE_BYTES, unix_request
from ansible_collections.vmic.fleet.plugins.module_utils.engine import STATUS_FIELDS, Engine, check_location
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, LimitError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import HEX40_RE, MAX_TORRENT_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.libtorrent_dep import import_libtorrent
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import TorrentMeta, parse_torrent

DEFAULT_SOCKET = "/run/rtorrent/rpc.sock"
MAX_HEADER_BYTES = 8192
VIEW = "main"
CUSTOM_V2 = "vmic_v2"
CUSTOM_ADDED = "vmic_added_at"
_SAFE_DIR_RE = re.compile(r"^/[A-Za-z0-9._+@%:=/-]*$")
# rtorrent's file priorities: 0 off, 1 normal, 2 high
_RTORRENT_PRIORITY_NORMAL = 1

# d.multicall2 columns, in order; ``_status_from_row`` reads them by name.
_COLUMNS = (
    ("hash", "d.hash="),
    ("name", "d.name="),
    ("directory", "d.directory="),
    ("state", "d.state="),
    ("is_active", "d.is_active="),
    ("is_open", "d.is_open="),
    ("hashing", "d.hashing="),
    ("complete", "d.complete="),
    ("size_bytes", "d.size_bytes="),
    ("completed_bytes", "d.completed_bytes="),
    ("down_total", "d.down.total="),
    ("up_total", "d.up.total="),
    ("down_rate", "d.down.rate="),
    ("up_rate", "d.up.rate="),
    ("peers_connected", "d.peers_connected="),
    ("peers_complete", "d.peers_complete="),
    ("message", "d.message="),
    ("finished", "d.timestamp.finished="),
    ("load_date", "d.load_date="),
    ("v2", "d.custom=%s" % CUSTOM_V2),
    ("added", "d.custom=%s" % CUSTOM_ADDED),
)


def with_fast_resume(meta, file_path):
    """Return the bytes of the checked torrent ``meta`` (a TorrentMeta) with rtorrent fast-resume data
    saying the file at ``file_path`` is complete.

    rtorrent reads ``libtorrent_resume`` when it opens a new download: ``bitfield`` as an integer
    equal to the number of chunks means "all chunks done"; a file whose ``mtime`` matches keeps its
    chunks, otherwise rtorrent hashes it. ``meta.data`` is canonical bencode (``parse_torrent``
    refuses anything else), so libtorrent's encoder writes its info dictionary back byte for byte.
    """
    lt = import_libtorrent()
    stat = os.stat(file_path)
    if stat.st_size != meta.size:
        raise EngineError("seed mode: %s holds %d bytes, the torrent says %d" % (file_path, stat.st_size, meta.size))
    chunks = (meta.size + meta.piece_size - 1) // meta.piece_size
    top = lt.bdecode(meta.data)
    top[b"libtorrent_resume"] = {
        b"bitfield": chunks,
        b"files": [{b"priority": _RTORRENT_PRIORITY_NORMAL, b"mtime": int(stat.st_mtime), b"completed": chunks}],
    }
    return lt.bencode(top)


class ScgiTransport(object):
    """One XML-RPC call per connection over an SCGI unix socket, with a timeout and a response size limit."""

    def __init__(self, socket_path, timeout=30, max_response_bytes=MAX_RESPONSE_BYTES):
        self.socket_path = socket_path
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes

    @staticmethod
    def frame(body):
        """SCGI framing of an XML-RPC request body."""
        headers = [(b"CONTENT_LENGTH", str(len(body)).encode("ascii")), (b"SCGI", b"1"),
                   (b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/RPC2"), (b"CONTENT_TYPE", b"text/xml")]
        block = b"".join(name + b"\0" + value + b"\0" for name, value in headers)
        return str(len(block)).encode("ascii") + b":" + block + b"," + body

    def request(self, body, what):
        """Send one request body; return the response body (bytes)."""
        raw = unix_request(self.socket_path, self.frame(body), self.timeout, self.max_response_bytes, "rtorrent %s" % self.socket_path, what,
                           header_allowance=MAX_HEADER_BYTES)
        return self.parse_response(raw, what)

    def parse_response(self, raw, what):
        """Split the CGI header block from the body; refuse error statuses and truncated bodies."""
        where = "rtorrent %s" % self.socket_path
        end = raw.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
        sep = 4
        if end < 0:
            end = raw.find(b"\n\n", 0, MAX_HEADER_BYTES)
            sep = 2
        if end < 0:
            raise EngineError("%s: %s: no SCGI response header in %d bytes" % (where, what, len(raw)))
        length = None
        for line in raw[:end].decode("latin-1").splitlines():
            name, _sep, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            if name == "status" and not value.startswith("200"):
                raise EngineError("%s: %s: SCGI status %s" % (where, what, value[:100]))
            if name == "content-length":
                if not value.isdigit():
                    raise EngineError("%s: %s: bad Content-Length %r" % (where, what, value[:30]))
                length = int(value)
        body = raw[end + sep:]
        if len(body) > self.max_response_bytes:
            raise LimitError("%s: %s: response larger than %d bytes" % (where, what, self.max_response_bytes))
        if length is not None and length != len(body):
            raise EngineError("%s: %s: response body of %d bytes, Content-Length says %d" % (where, what, len(body), length))
        return body


class RtorrentEngineClient(Engine):
    """The engine interface for an rtorrent 0.9.x reached on its SCGI unix socket (see the module docstring)."""

    def __init__(self, socket_path=DEFAULT_SOCKET, timeout=30, max_response_bytes=MAX_RESPONSE_BYTES, poll_interval=0.1):
        self.socket_path = socket_path
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.transport = ScgiTransport(socket_path, timeout, max_response_bytes)

    # ------------------------------------------------------------------ XML-RPC

    def call(self, method, *params):
        """Call one XML-RPC method; return its result or raise EngineError naming the method and the fault."""
        body = xmlrpc.client.dumps(tuple(params), method, encoding="utf-8").encode("utf-8")
        raw = self.transport.request(body, method)
        try:
            result = xmlrpc.client.loads(raw, use_builtin_types=True)[0]
        except xmlrpc.client.Fault as exc:
            raise EngineError("rtorrent %s: %s failed: %s (fault %s)" % (self.socket_path, method, exc.faultString, exc.faultCode))
        except Exception as exc:  # pylint: disable=broad-except
            # expat and xmlrpc raise several unrelated types for malformed responses
            raise EngineError("rtorrent %s: %s: malformed XML-RPC response: %s" % (self.socket_path, method, exc))
        if len(result) != 1:
            raise EngineError("rtorrent %s: %s: response holds %d values, expected 1" % (self.socket_path, method, len(result)))
        return result[0]

    def ping(self):
        """Versions of the rtorrent client and its libtorrent; raise EngineError if unreachable."""
        return {"ok": True, "engine": "rtorrent", "client_version": self.call("system.client_version"),
                "library_version": self.call("system.library_version")}

    def keys(self):
        """The keys (lower-case v1 info-hashes) of every download."""
        return [str(value).lower() for value in self.call("download_list", "", VIEW)]

    # ------------------------------------------------------------------ helpers

    def _key(self, key, op):
        text = key.lower() if isinstance(key, str) else None
        if text is None or not HEX40_RE.match(text):
            raise EngineError("rtorrent %s: %s: %r is not a 40-hex v1 info-hash" % (self.socket_path, op, key))
        return text

    def _dir(self, path, op, what):
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise EngineError("rtorrent %s: %s: %s %r is not an absolute path" % (self.socket_path, op, what, path))
        path = os.path.normpath(path)
        if not os.path.isdir(path):
            raise EngineError("rtorrent %s: %s: %s %s is not a directory" % (self.socket_path, op, what, path))
        return path

    def _wait(self, what, predicate, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise EngineError("rtorrent %s: %s" % (self.socket_path, what))
            time.sleep(self.poll_interval)

    def _one(self, key, op):
        found = self.status(key)
        if not found:
            raise EngineError("rtorrent %s: %s: no torrent %s" % (self.socket_path, op, key))
        return found[0]

    # ------------------------------------------------------------------ Engine

    def add(self, torrent_data, save_dir, seed_mode=False):
        """Add a torrent given as bytes or as the TorrentMeta that ``parse_torrent``/``check_torrent`` returned."""
        if isinstance(torrent_data, TorrentMeta):
            meta = torrent_data
        elif isinstance(torrent_data, (bytes, bytearray)):
            meta = parse_torrent(bytes(torrent_data), MAX_TORRENT_BYTES, what="torrent to add to rtorrent")
        else:
            raise EngineError("rtorrent %s: add: torrent data is neither bytes nor a TorrentMeta" % self.socket_path)
        key = meta.info_hash_v1
        if key in self.keys():
            return key
        save_dir = self._dir(save_dir, "add %s" % meta.name, "save_dir")
        data = meta.data
        if seed_mode:
            data = with_fast_resume(meta, os.path.join(save_dir, meta.name))
        # The directory goes in with the load so that rtorrent checks the fast-resume data against the
        # file there; it passes rtorrent's command parser, hence the strict character set (no quotes,
        # commas, semicolons or whitespace that could end the argument and inject commands).
        if not _SAFE_DIR_RE.match(save_dir):
            raise EngineError("rtorrent %s: add %s: save_dir %r holds characters other than letters, digits and ._+@%%:=/-"
                              % (self.socket_path, meta.name, save_dir))
        self.call("load.raw", "", xmlrpc.client.Binary(data), 'd.directory.set="%s"' % save_dir)
        self._wait("add %s: rtorrent did not list %s after loading it (rtorrent computes the v1 info-hash "
                   "over the info dictionary; it refused or rewrote this torrent)" % (meta.name, key),
                   lambda: key in self.keys())
        target = key.upper()
        self.call("d.custom.set", target, CUSTOM_V2, meta.info_hash_v2)
        self.call("d.custom.set", target, CUSTOM_ADDED, "%.3f" % time.time())
        self.call("d.start", target)
        if seed_mode:
            # rtorrent applies the fast-resume data in its (quick, data-free) initial check: wait for it, so that
            # the torrent is seeding when add returns, as with the libtorrent engine
            self._wait("add %s: rtorrent did not finish the initial check of %s" % (meta.name, key),
                       lambda: self.call("d.is_hash_checked", target) and not self.call("d.is_hash_checking", target))
        return key

    def status(self, key=None):
        if key is not None:
            key = self._key(key, "status")
            if key not in self.keys():
                return []
        rows = self.call("d.multicall2", "", VIEW, *[command for _name, command in _COLUMNS])
        result = []
        for row in rows:
            if not isinstance(row, list) or len(row) != len(_COLUMNS):
                raise EngineError("rtorrent %s: d.multicall2: malformed row" % self.socket_path)
            values = dict((name, value) for (name, _command), value in zip(_COLUMNS, row))
            if key is not None and str(values["hash"]).lower() != key:
                continue
            result.append(self._status_from_row(values))
        return result

    def _bytes_from_seeds(self, target):
        try:
            peers = self.call("p.multicall", target, "", "p.completed_percent=", "p.down_total=")
        except EngineError:
            return 0
        return sum(int(down) for percent, down in peers if int(percent) >= 100)

    def _status_from_row(self, values):
        key = str(values["hash"]).lower()
        message = str(values["message"] or "")
        # rtorrent keeps the last tracker message in d.message; those are no torrent errors
        error = message if message and not message.startswith("Tracker:") else None
        if values["hashing"]:
            state = "checking"
        elif not values["state"] or not values["is_active"]:
            state = "error" if error else "paused"
        elif values["complete"]:
            state = "seeding"
        else:
            state = "downloading"
        size = int(values["size_bytes"])
        done = int(values["completed_bytes"])
        try:
            added_at = float(values["added"]) if values["added"] else float(values["load_date"]) or None
        except ValueError:
            added_at = None
        finished = int(values["finished"])
        status = {
            "key": key,
            "info_hash_v1": key,
            "info_hash_v2": str(values["v2"]) or None,
            "name": str(values["name"]),
            "save_dir": str(values["directory"]),
            "state": state,
            "progress": (float(done) / size) if size else 0.0,
            "total_size": size,
            "total_done": done,
            "bytes_from_peers": int(values["down_total"]),
            "bytes_from_web_seed": 0,
            "bytes_from_seeds": self._bytes_from_seeds(key.upper()) if int(values["peers_complete"]) else 0,
            "upload_total": int(values["up_total"]),
            "num_peers": int(values["peers_connected"]),
            "num_seeds": int(values["peers_complete"]),
            "download_rate": int(values["down_rate"]),
            "upload_rate": int(values["up_rate"]),
            "hashfail_count": 0,
            "banned_peers": 0,
            "error": error,
            "added_at": added_at,
            "completed_at": float(finished) if finished else None,
        }
        return dict((field, status[field]) for field in STATUS_FIELDS)

    def _located(self, key, op, source_dir, name):
        """The status of ``key`` after checking that rtorrent names the directory and file the caller added.

        Every path this client acts on is built from ``source_dir`` and ``name`` (the caller's), never from
        rtorrent's answer: whoever answers on the socket could otherwise point root at any file.
        """
        if source_dir is None or name is None:
            raise EngineError("rtorrent %s: %s %s: the directory and file name it was added with are needed "
                              "(this client does not act on paths rtorrent answers)" % (self.socket_path, op, key))
        if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
            raise EngineError("rtorrent %s: %s %s: %r is not a file name" % (self.socket_path, op, key, name))
        source_dir = self._dir(source_dir, "%s %s" % (op, key), "source directory")
        current = self._one(key, op)
        check_location("rtorrent %s" % self.socket_path, op, key, current, source_dir, name)
        return current, source_dir

    def _regular(self, path, what):
        try:
            stat = os.lstat(path)
        except OSError as exc:
            raise EngineError("rtorrent %s: %s: %s" % (self.socket_path, what, exc.strerror or exc))
        if not S_ISREG(stat.st_mode):
            raise EngineError("rtorrent %s: %s: %s is not a regular file" % (self.socket_path, what, path))
        return stat

    def move(self, key, dest_dir, source_dir=None, name=None):
        key = self._key(key, "move")
        current, source_dir = self._located(key, "move", source_dir, name)
        dest_dir = self._dir(dest_dir, "move %s" % name, "dest_dir")
        source = os.path.join(source_dir, name)
        target = os.path.join(dest_dir, name)
        what = "move %s from %s to %s" % (name, source_dir, dest_dir)
        if source_dir == dest_dir:
            return
        if os.path.lexists(target):
            raise EngineError("rtorrent %s: %s: %s already exists" % (self.socket_path, what, target))
        if self._regular(source, what).st_dev != os.stat(dest_dir).st_dev:
            raise EngineError("rtorrent %s: %s: %s is on another filesystem" % (self.socket_path, what, dest_dir))
        handle = key.upper()
        was_started = current["state"] != "paused"
        # rtorrent refuses a new directory while the download's files are open: stop and close first
        self.call("d.stop", handle)
        self.call("d.close", handle)
        self._wait("%s: download did not close" % what, lambda: not self.call("d.is_open", handle))
        try:
            # rename(2) after a link check: the file appears in dest_dir complete, in one step
            if os.path.lexists(target):
                raise EngineError("rtorrent %s: %s: %s already exists" % (self.socket_path, what, target))
            self._regular(source, what)
            os.rename(source, target)
        except OSError as exc:
            if was_started:
                self.call("d.start", handle)
            if exc.errno == errno.EXDEV:
                raise EngineError("rtorrent %s: %s: %s is on another filesystem" % (self.socket_path, what, dest_dir))
            raise EngineError("rtorrent %s: %s: %s" % (self.socket_path, what, exc.strerror or exc))
        self.call("d.directory.set", handle, dest_dir)
        if was_started:
            self.call("d.start", handle)
        self._wait("%s: rtorrent did not take the new directory" % what,
                   lambda: os.path.normpath(self._one(key, "move")["save_dir"]) == dest_dir)

    def remove(self, key, delete_files=False, save_dir=None, name=None):
        key = self._key(key, "remove")
        if not self.status(key):
            return
        path = None
        if delete_files or save_dir is not None or name is not None:
            _current, save_dir = self._located(key, "remove", save_dir, name)
            path = os.path.join(save_dir, name)
        self.call("d.erase", key.upper())
        self._wait("remove %s: rtorrent still lists it" % key, lambda: key not in self.keys())
        if delete_files:
            try:
                if os.path.lexists(path):
                    self._regular(path, "remove %s" % key)
                    os.unlink(path)
            except OSError as exc:
                raise EngineError("rtorrent %s: remove %s: deleting %s: %s" % (self.socket_path, key, path, exc.strerror or exc))
