# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch an image list or a .torrent from a path or an HTTPS URL, with a size limit and a total deadline.

Nothing fetched is trusted: the caller verifies it (signature, or a hash from a verified list).
HTTPS certificates are checked against the system store or a given CA file; plain HTTP is refused
unless explicitly allowed (the signature still protects the content, but not its freshness).

A fetch has a total deadline (connect, TLS, redirects, headers and body together), not only a
per-read socket timeout: a server that sends one byte a second cannot hold it. When the deadline
passes, every socket of the fetch is shut down, which wakes a blocked read. Redirects go only to
https:// (to http:// only from an allowed http:// source, never from https://); no other scheme
(ftp://, file://, data:) is ever followed. Local paths can be refused by the caller (``allow_local``).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time

from ansible_collections.vmic.fleet.plugins.module_utils.errors import FetchError, LimitError

try:
    from http.client import HTTPConnection, HTTPException, HTTPSConnection
    from urllib.error import HTTPError, URLError
    from urllib.parse import urljoin, urlsplit
    from urllib.request import (HTTPDefaultErrorHandler, HTTPErrorProcessor, HTTPHandler, HTTPRedirectHandler, HTTPSHandler,
                                OpenerDirector, ProxyHandler, Request)
except ImportError:  # pragma: no cover - Python 2 is not supported
    raise

CHUNK = 64 * 1024
MAX_REDIRECTS = 5


class _Deadline(object):
    """The total time limit of one fetch; when it passes, the fetch's sockets are shut down."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self):
        """Seconds left (at least a millisecond, so that a socket timeout is never 0 = non-blocking)."""
        return max(self.end - time.monotonic(), 0.001)

    def create_connection(self, address, timeout=None, source_address=None):  # pylint: disable=unused-argument
        """socket.create_connection bounded by the deadline; the socket is registered to be cut at expiry."""
        sock = socket.create_connection(address, self.remaining(), source_address)
        with self._lock:
            if self.expired:
                sock.close()
                raise socket.timeout("deadline passed")
            # A duplicate descriptor: shutdown() through it reaches the connection even after ssl has
            # taken over the original socket object.
            self._sockets.append(sock.dup())
        return sock

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        """Stop the timer and release the duplicate descriptors."""
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets = []


def _connection_class(base, deadline):
    class _BoundedConnection(base):
        def __init__(self, *args, **kwargs):
            kwargs["timeout"] = deadline.remaining()
            base.__init__(self, *args, **kwargs)
            self._create_connection = deadline.create_connection

    return _BoundedConnection


class _BoundedHTTPSHandler(HTTPSHandler):
    def __init__(self, context, deadline):
        HTTPSHandler.__init__(self, context=context)
        self._bounded_context = context
        self._connection = _connection_class(HTTPSConnection, deadline)

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._bounded_context)


class _BoundedHTTPHandler(HTTPHandler):
    def __init__(self, deadline):
        HTTPHandler.__init__(self)
        self._connection = _connection_class(HTTPConnection, deadline)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _RedirectPolicy(HTTPRedirectHandler):
    """Follow a redirect to https://, or to http:// from an allowed http:// URL; refuse everything else."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, allow_http, what, src):
        self.allow_http = allow_http
        self.what = what
        self.src = src

    def _check(self, req, newurl):
        scheme = urlsplit(newurl).scheme.lower()
        if scheme == "https":
            return
        if scheme == "http" and self.allow_http and not req.full_url.lower().startswith("https://"):
            return
        if scheme == "http":
            why = "it leaves HTTPS" if req.full_url.lower().startswith("https://") else "plain HTTP is not allowed"
        else:
            why = "only https:// (or an allowed http://) is followed"
        raise FetchError("%s %s: redirect from %s to %s refused: %s" % (self.what, self.src, req.full_url, newurl, why))

    def http_error_302(self, req, fp, code, msg, headers):
        # Checked before urllib's own scheme test, which lets ftp:// through.
        location = headers.get("location") or headers.get("uri")
        if location:
            self._check(req, urljoin(req.full_url, location))
        return HTTPRedirectHandler.http_error_302(self, req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self._check(req, newurl)
        return HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)


def is_url(src):
    """True for http:// and https:// sources."""
    return src.startswith("https://") or src.startswith("http://")


def _read_local(src, max_bytes, what, allow_local):
    if "://" in src:
        raise FetchError("%s %s: only local paths and https:// URLs are supported" % (what, src))
    if not allow_local:
        raise FetchError("%s %s: a local path is refused here; give an https:// URL" % (what, src))
    try:
        size = os.path.getsize(src)
    except OSError as exc:
        raise FetchError("%s %s: %s" % (what, src, exc.strerror or exc))
    if size > max_bytes:
        raise LimitError("%s %s: %d bytes, larger than the limit of %d bytes" % (what, src, size, max_bytes))
    with open(src, "rb") as handle:
        return handle.read(max_bytes + 1)


def _opener(deadline, ca_file, allow_http, what, src):
    # Only the handlers wanted: no FileHandler, FTPHandler or DataHandler, whatever a redirect says.
    context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    opener = OpenerDirector()
    handlers = [ProxyHandler(), _BoundedHTTPSHandler(context, deadline), _RedirectPolicy(allow_http, what, src),
                HTTPDefaultErrorHandler(), HTTPErrorProcessor()]
    if allow_http:
        handlers.append(_BoundedHTTPHandler(deadline))
    for handler in handlers:
        opener.add_handler(handler)
    return opener


def _read_url(src, max_bytes, deadline, ca_file, allow_http, what):
    received = [0]

    def too_slow():
        return FetchError("%s %s: not complete within the total deadline of %g s (%d bytes received)"
                          % (what, src, deadline.seconds, received[0]))

    request = Request(src, headers={"User-Agent": "vmic.fleet", "Accept-Encoding": "identity"})
    try:
        response = _opener(deadline, ca_file, allow_http, what, src).open(request, timeout=deadline.remaining())
    except HTTPError as exc:
        raise FetchError("%s %s: HTTP %d %s" % (what, src, exc.code, exc.reason))
    except (URLError, OSError, HTTPException, ssl.SSLError) as exc:
        if deadline.expired:
            raise too_slow()
        raise FetchError("%s %s: %s" % (what, src, getattr(exc, "reason", None) or exc))
    except (ValueError, UnicodeError, OverflowError) as exc:
        # A hostile server's Location or headers can make the URL parser raise: a refusal, not a crash.
        raise FetchError("%s %s: malformed answer from the server: %s" % (what, src, exc))
    try:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise LimitError("%s %s: %s bytes, larger than the limit of %d bytes" % (what, src, declared, max_bytes))
        chunks = []
        while True:
            # read1 returns what one read gives, so the deadline is checked while data trickles in.
            chunk = response.read1(CHUNK)
            if deadline.expired:
                raise too_slow()
            if not chunk:
                break
            received[0] += len(chunk)
            if received[0] > max_bytes:
                raise LimitError("%s %s: more than the limit of %d bytes" % (what, src, max_bytes))
            chunks.append(chunk)
        if declared and declared.isdigit() and received[0] != int(declared):
            raise FetchError("%s %s: connection closed after %d of %s bytes" % (what, src, received[0], declared))
        return b"".join(chunks)
    except (OSError, HTTPException, ssl.SSLError) as exc:
        if deadline.expired:
            raise too_slow()
        raise FetchError("%s %s: %s" % (what, src, exc))
    except (ValueError, UnicodeError, OverflowError) as exc:
        raise FetchError("%s %s: malformed answer from the server: %s" % (what, src, exc))
    finally:
        response.close()


def fetch_bytes(src, max_bytes, timeout=30, ca_file=None, allow_http=False, what="object", allow_local=True):
    """Return the bytes at ``src`` (a local path or URL); refuse anything larger than ``max_bytes``.

    ``timeout`` is the total deadline in seconds of a URL fetch: connecting, TLS, redirects, headers
    and body together (name resolution excepted). ``allow_http`` allows a plain http:// source (and
    redirects from it to http://). ``allow_local=False`` refuses a local path (for objects that must
    come from a URL, e.g. a ``vmic:torrent``).
    """
    if not is_url(src):
        data = _read_local(src, max_bytes, what, allow_local)
    else:
        if src.startswith("http://") and not allow_http:
            raise FetchError("%s %s: plain HTTP is refused (use https:// or allow it explicitly)" % (what, src))
        if not timeout or timeout <= 0:
            raise FetchError("%s %s: the deadline must be a positive number of seconds, not %r" % (what, src, timeout))
        deadline = _Deadline(timeout)
        try:
            data = _read_url(src, max_bytes, deadline, ca_file, allow_http, what)
        finally:
            deadline.close()
    if len(data) > max_bytes:
        raise LimitError("%s %s: larger than the limit of %d bytes" % (what, src, max_bytes))
    return data
