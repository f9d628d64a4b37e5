# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch an image list or a .torrent from a path or an HTTPS URL, with a size limit.

Nothing fetched is trusted: the caller verifies it (signature, or a hash from a verified list).
HTTPS certificates are checked against the system store or a given CA file; plain HTTP is refused
unless explicitly allowed (the signature still protects the content, but not its freshness).
"""

from __future__ import annotations

import os
import ssl

from ansible_collections.vmic.fleet.plugins.module_utils.errors import FetchError, LimitError

try:
    from urllib.request import HTTPRedirectHandler, HTTPSHandler, Request, build_opener
    from urllib.error import HTTPError, URLError
except ImportError:  # pragma: no cover - Python 2 is not supported
    raise

CHUNK = 64 * 1024


class _SameSchemeRedirect(HTTPRedirectHandler):
    """Follow redirects only from https to https."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.full_url.startswith("https://") and not newurl.startswith("https://"):
            raise FetchError("%s: redirect to %s leaves HTTPS" % (req.full_url, newurl))
        return HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)


def is_url(src):
    """True for http:// and https:// sources."""
    return src.startswith("https://") or src.startswith("http://")


def fetch_bytes(src, max_bytes, timeout=30, ca_file=None, allow_http=False, what="object"):
    """Return the bytes at ``src`` (a local path or URL); refuse anything larger than ``max_bytes``."""
    if not is_url(src):
        if "://" in src:
            raise FetchError("%s %s: only local paths and https:// URLs are supported" % (what, src))
        try:
            size = os.path.getsize(src)
        except OSError as exc:
            raise FetchError("%s %s: %s" % (what, src, exc.strerror or exc))
        if size > max_bytes:
            raise LimitError("%s %s: %d bytes, larger than the limit of %d bytes" % (what, src, size, max_bytes))
        with open(src, "rb") as handle:
            data = handle.read(max_bytes + 1)
    else:
        if src.startswith("http://") and not allow_http:
            raise FetchError("%s %s: plain HTTP is refused (use https:// or allow it explicitly)" % (what, src))
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        opener = build_opener(HTTPSHandler(context=context), _SameSchemeRedirect())
        request = Request(src, headers={"User-Agent": "vmic.fleet"})
        try:
            response = opener.open(request, timeout=timeout)
        except HTTPError as exc:
            raise FetchError("%s %s: HTTP %d %s" % (what, src, exc.code, exc.reason))
        except URLError as exc:
            raise FetchError("%s %s: %s" % (what, src, exc.reason))
        except (OSError, ssl.SSLError) as exc:
            raise FetchError("%s %s: %s" % (what, src, exc))
        try:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise LimitError("%s %s: %s bytes, larger than the limit of %d bytes" % (what, src, declared, max_bytes))
            chunks, total = [], 0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
            if total > max_bytes:
                data += b"\0"
        except (OSError, ssl.SSLError) as exc:
            raise FetchError("%s %s: %s" % (what, src, exc))
        finally:
            response.close()
    if len(data) > max_bytes:
        raise LimitError("%s %s: larger than the limit of %d bytes" % (what, src, max_bytes))
    return data
