# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's JSON-lines protocol on a unix socket: request helper, client call, server, request checks.

One JSON object per line (at most 16 MiB) with ``op`` in add, status, move, remove, ping; one JSON
object per line back, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``:

- add: ``torrent`` (base64 of the .torrent), ``save_dir`` (absolute, existing), ``seed_mode``
  (bool, optional) -> ``key``, ``added`` (false when it was already present).
- status: ``key`` (optional) -> ``torrents`` (list of status dicts; empty for an unknown key).
- move: ``key``, ``dest_dir`` (absolute, existing, same filesystem) -> returns when moved.
- remove: ``key``, ``delete_files`` (bool, optional) -> returns when removed.
- ping -> ``engine``, ``version``, ``torrents``.

:func:`unix_request` is the one way this collection sends a request on a unix socket and reads the
answer within a total deadline and a size limit: the engine client uses it for JSON lines, the
rtorrent client for SCGI.  Nothing here imports libtorrent.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import time

from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, LimitError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import HEX40_RE

MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
OPS = ("add", "status", "move", "remove", "ping", "stats")
SOCKET_MODE = 0o600
CONNECTION_TIMEOUT = 300        # seconds a client connection may stay silent before the server closes it
_RECV_BYTES = 65536


# --------------------------------------------------------------------------- the client side


def unix_request(socket_path, payload, timeout, max_bytes, where, what, until_newline=False, header_allowance=0):
    """Send ``payload`` on a new connection to the unix socket ``socket_path`` and return the answer (bytes).

    The answer ends at the first newline (``until_newline``, the newline is not returned) or when the
    peer closes the connection.  Connecting, sending and reading share one deadline of ``timeout``
    seconds, so a peer that trickles bytes is cut off; an answer longer than ``max_bytes`` (plus
    ``header_allowance`` for a header block the caller strips) is refused with LimitError.  Errors name
    ``where`` (e.g. "engine /run/x.sock") and ``what`` (the request).
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    chunks = []
    total = 0
    try:
        try:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(payload)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
                chunk = sock.recv(_RECV_BYTES)
                if not chunk:
                    if until_newline:
                        raise EngineError("%s: %s: connection closed before a complete response" % (where, what))
                    break
                if until_newline:
                    newline = chunk.find(b"\n")
                    if newline >= 0:
                        chunks.append(chunk[:newline])
                        break
                total += len(chunk)
                if total > max_bytes + header_allowance:
                    raise LimitError("%s: %s: response larger than %d bytes" % (where, what, max_bytes))
                chunks.append(chunk)
        except socket.timeout:
            raise EngineError("%s: no complete answer to %s within %s s" % (where, what, timeout))
        except OSError as exc:
            raise EngineError("%s: %s failed: %s" % (where, what, exc.strerror or exc))
    finally:
        sock.close()
    return b"".join(chunks)


def encode_line(message):
    """One protocol line: compact JSON and a newline."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def call(socket_path, op, fields, timeout):
    """Send one request to the engine at ``socket_path``; return the response dict or raise EngineError."""
    where = "engine %s" % socket_path
    message = dict(fields)
    message["op"] = op
    line = encode_line(message)
    if len(line) > MAX_REQUEST_BYTES:
        raise EngineError("%s: %s request of %d bytes exceeds the limit of %d" % (where, op, len(line), MAX_REQUEST_BYTES))
    reply = unix_request(socket_path, line, timeout, MAX_RESPONSE_BYTES, where, op, until_newline=True)
    try:
        response = json.loads(reply.decode("utf-8"))
    except ValueError as exc:
        raise EngineError("%s: %s: response is not JSON: %s" % (where, op, exc))
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise EngineError("%s: %s: malformed response" % (where, op))
    if not response["ok"]:
        raise EngineError("%s: %s: %s" % (where, op, response.get("error") or "unknown error"))
    return response


# --------------------------------------------------------------------------- the server side


def serve_lines(rfile, wfile, answer, on_crash=None):
    """Answer the requests of one connection, one line each, in order, until the client closes it.

    ``answer(request)`` returns the response dict; an exception it raises becomes an
    ``internal error`` answer after ``on_crash(request, exc)`` (for the log).  An oversize line or
    one that is not JSON is answered and ends the connection (the rest of the stream has no framing).
    """
    while True:
        line = rfile.readline(MAX_REQUEST_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_REQUEST_BYTES:
            _reply(wfile, {"ok": False, "error": "request larger than %d bytes" % MAX_REQUEST_BYTES})
            return
        try:
            request = json.loads(line.decode("utf-8"))
        except ValueError as exc:
            _reply(wfile, {"ok": False, "error": "request is not JSON: %s" % exc})
            return
        try:
            response = answer(request)
        except Exception as exc:  # pylint: disable=broad-except
            if on_crash is not None:
                on_crash(request, exc)
            response = {"ok": False, "error": "internal error: %s" % exc}
        _reply(wfile, response)


def _reply(wfile, response):
    wfile.write(encode_line(response))
    wfile.flush()


class _Handler(socketserver.StreamRequestHandler):
    """One connection of the server."""

    timeout = CONNECTION_TIMEOUT

    def handle(self):
        serve_lines(self.rfile, self.wfile, self.server.answer, self.server.on_crash)


class JsonLinesServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The engine's socket: one thread per connection, each request answered by ``answer(request)``."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path, answer, on_crash=None):
        self.answer = answer
        self.on_crash = on_crash
        socketserver.UnixStreamServer.__init__(self, path, _Handler)


def open_server(path, answer, on_crash=None):
    """Bind the engine's socket at ``path`` (mode 0600) and return the JsonLinesServer (not yet serving).

    A socket file that nobody answers on is a dead engine's and is replaced; one that answers belongs
    to a running engine, and this one refuses to start.
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise EngineError("socket %s: another engine is listening" % path)
        finally:
            probe.close()
    old_umask = os.umask(0o777 & ~SOCKET_MODE)     # never a moment with looser permissions than SOCKET_MODE
    try:
        server = JsonLinesServer(path, answer, on_crash)
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    return server


# --------------------------------------------------------------------------- request checks


def check_fields(request, required, optional=()):
    """Refuse unknown and missing fields of ``request`` (``op`` is always allowed)."""
    unknown = sorted(set(request) - set(required) - set(optional) - {"op"})
    if unknown:
        raise EngineError("%s: unknown fields %s" % (request["op"], ", ".join(unknown)))
    missing = [name for name in required if name not in request]
    if missing:
        raise EngineError("%s: missing fields %s" % (request["op"], ", ".join(missing)))


def request_key(request):
    """The ``key`` of ``request``: a v1 info-hash in 40 lower-case hex."""
    key = request.get("key")
    if not isinstance(key, str) or not HEX40_RE.match(key):
        raise EngineError("%s: key %r is not a v1 info-hash (40 lower-case hex)" % (request["op"], key))
    return key


def request_bool(request, name):
    """The boolean field ``name`` of ``request`` (false when absent)."""
    value = request.get(name, False)
    if not isinstance(value, bool):
        raise EngineError("%s: %s is not a boolean" % (request["op"], name))
    return value


def request_dir(request, name):
    """The field ``name`` of ``request``: an absolute path of an existing directory, normalised."""
    path = request.get(name)
    if not isinstance(path, str) or not os.path.isabs(path) or "\x00" in path:
        raise EngineError("%s: %s %r is not an absolute path" % (request["op"], name, path))
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise EngineError("%s: %s %s is not an existing directory" % (request["op"], name, path))
    return path


def request_op(request):
    """The ``op`` of ``request``, refusing anything but a JSON object with a known op."""
    if not isinstance(request, dict):
        raise EngineError("request is not a JSON object")
    op = request.get("op")
    if op not in OPS:
        raise EngineError("unknown op %r" % (op,))
    return op
