#!/usr/bin/env python
"""Threaded HTTP/1.1 file server with Range support and byte counters; also a small fetch client.

libtorrent's web seeds (BEP 19) send ``Range: bytes=a-b`` requests; Python's SimpleHTTPRequestHandler
ignores them, so this server answers single ranges with 206 (and 416 for unsatisfiable ones).
It serves regular files below one directory, read-only, and counts the body bytes it sent.

The counters are readable two ways, because the test process usually sits outside the server's
network namespace:

* ``--stats-file PATH``: JSON rewritten atomically (at most every 0.2 s while serving, at start and at
  exit) — the file appears once the socket listens, so it doubles as the readiness signal;
* ``GET /_status``: the same JSON.

Stats: ``bytes_served``, ``requests``, ``range_requests``, ``errors``, ``per_path`` {path: bytes},
``listening`` ("addr:port"), ``pid``, ``updated``.

Standalone (stdlib only) so it runs as a script inside a namespace::

    python3 httpd.py serve --root DIR --bind 198.18.1.1 --port 8080 --stats-file S.json
    python3 httpd.py fetch URL DEST [--result-file R.json]

``fetch`` writes to ``DEST.part`` and renames when complete; the result file records bytes and times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
MAX_PATH = 4096
STATS_INTERVAL = 0.2


def write_json_atomic(path, obj):
    """Write JSON to ``path`` through a temporary file and rename (readers never see half a file)."""
    tmp = "%s.tmp-%d-%d" % (path, os.getpid(), threading.get_ident())
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, sort_keys=True)
    os.replace(tmp, path)


class Stats:
    """Thread-safe counters of what the server sent."""

    def __init__(self, listening):
        self.lock = threading.Lock()
        self.data = {"bytes_served": 0, "requests": 0, "range_requests": 0, "errors": 0,
                     "per_path": {}, "listening": listening, "pid": os.getpid(), "updated": time.time()}
        self.version = 0

    def count(self, path, nbytes, ranged, error=False):
        """Record one response."""
        with self.lock:
            self.data["requests"] += 1
            self.data["bytes_served"] += nbytes
            if ranged:
                self.data["range_requests"] += 1
            if error:
                self.data["errors"] += 1
            if nbytes:
                self.data["per_path"][path] = self.data["per_path"].get(path, 0) + nbytes
            self.version += 1

    def snapshot(self):
        """A copy of the counters."""
        with self.lock:
            snap = json.loads(json.dumps(self.data))
        snap["updated"] = time.time()
        return snap


class RangeHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files under ``server.root`` with single-range support."""

    protocol_version = "HTTP/1.1"
    server_version = "vmic-testfleet-httpd/1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        if self.server.verbose:
            sys.stderr.write("httpd %s - %s\n" % (self.address_string(), format % args))

    def do_HEAD(self):  # pylint: disable=invalid-name
        """Headers only."""
        self._serve(send_body=False)

    def do_GET(self):  # pylint: disable=invalid-name
        """Whole file or one range."""
        self._serve(send_body=True)

    def _error(self, code, reason, path):
        body = ("%d %s\n" % (code, reason)).encode()
        self.send_response(code, reason)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.stats.count(path, 0, False, error=True)

    def _resolve(self, url_path):
        if len(url_path) > MAX_PATH:
            return None
        rel = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path).lstrip("/")
        if "\x00" in rel:
            return None
        full = os.path.realpath(os.path.join(self.server.root, rel))
        if full != self.server.root and not full.startswith(self.server.root + os.sep):
            return None
        return full

    def _serve(self, send_body):
        path = self.path
        if path == "/_status":
            body = json.dumps(self.server.stats.snapshot(), sort_keys=True).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
            return
        full = self._resolve(path)
        if full is None or not os.path.isfile(full):
            self._error(404, "Not Found", path)
            return
        try:
            handle = open(full, "rb")  # pylint: disable=consider-using-with
        except OSError:
            self._error(403, "Forbidden", path)
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            start, end, ranged = 0, size - 1, False
            header = self.headers.get("Range")
            if header:
                match = _RANGE_RE.match(header.strip())
                if match and (match.group(1) or match.group(2)):
                    ranged = True
                    if match.group(1):
                        start = int(match.group(1))
                        end = int(match.group(2)) if match.group(2) else size - 1
                    else:  # suffix range: the last N bytes
                        start = max(0, size - int(match.group(2)))
                    end = min(end, size - 1)
                    if start >= size or start > end:
                        self.send_response(416)
                        self.send_header("Content-Range", "bytes */%d" % size)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        self.server.stats.count(path, 0, True, error=True)
                        return
                # anything else (multiple ranges, garbage): RFC 7233 allows ignoring Range
            length = max(0, end - start + 1)
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if ranged:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            self.end_headers()
            sent = 0
            if send_body and length:
                try:
                    self.wfile.flush()
                    sent = self.connection.sendfile(handle, start, length)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
            self.server.stats.count(path, sent, ranged)


def serve(root, bind, port, stats_file=None, verbose=False):
    """Serve ``root`` on ``bind:port`` until SIGTERM/SIGINT."""
    server = ThreadingHTTPServer((bind, port), RangeHandler)
    server.daemon_threads = True
    server.root = os.path.realpath(root)
    server.verbose = verbose
    server.stats = Stats("%s:%d" % server.server_address[:2])
    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def writer():
        written = -1
        while not stop.wait(STATS_INTERVAL):
            if server.stats.version != written:
                written = server.stats.version
                write_json_atomic(stats_file, server.stats.snapshot())

    if stats_file:
        write_json_atomic(stats_file, server.stats.snapshot())
        threading.Thread(target=writer, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()
        if stats_file:
            write_json_atomic(stats_file, server.stats.snapshot())


def fetch(url, dest, result_file=None, timeout=60, chunk=1 << 20):
    """GET ``url`` into ``dest`` (via ``dest.part`` + rename); returns a result dict."""
    started = time.time()
    part = dest + ".part"
    nbytes = 0
    error = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            while True:
                block = resp.read(chunk)
                if not block:
                    break
                out.write(block)
                nbytes += len(block)
        os.replace(part, dest)
    except (OSError, ValueError) as exc:
        error = "%s: %s" % (url, exc)
        try:
            os.unlink(part)
        except OSError:
            pass
    result = {"url": url, "dest": dest, "bytes": nbytes, "started": started, "finished": time.time(),
              "error": error}
    if result_file:
        write_json_atomic(result_file, result)
    return result


def main(argv=None):
    """Command line: ``serve`` or ``fetch``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--root", required=True)
    p_serve.add_argument("--bind", default="0.0.0.0")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--stats-file")
    p_serve.add_argument("--verbose", action="store_true")
    p_fetch = sub.add_parser("fetch")
    p_fetch.add_argument("url")
    p_fetch.add_argument("dest")
    p_fetch.add_argument("--result-file")
    p_fetch.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.root, args.bind, args.port, args.stats_file, args.verbose)
        return 0
    result = fetch(args.url, args.dest, args.result_file, args.timeout)
    if result["error"]:
        sys.stderr.write("fetch failed: %s\n" % result["error"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
