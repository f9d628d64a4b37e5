#!/usr/bin/env python
"""Ask an HTTP tracker about one info-hash, from inside a namespace; prints the decoded answer as JSON.

    python3 probe.py announce http://198.18.1.1:6969/announce <40 hex>

opentracker checks its whitelist only when a peer is added (a ``stopped`` event is answered for any
hash), so the probe announces as a peer on port 1 with ``numwant=0`` and then at once sends
``event=stopped`` to take itself out of the swarm again.
Output: {"ok": bool, "failure": str|null, "raw": "<first bytes>"}; standalone (stdlib only).
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request

MAX_ANSWER = 64 * 1024


def announce(url, info_hash_hex, timeout=10):
    """Return {"ok", "failure", "raw"} for a stopped-announce of ``info_hash_hex`` to ``url``."""
    info_hash = bytes.fromhex(info_hash_hex)
    if len(info_hash) != 20:
        raise ValueError("info-hash %s: need 40 hex digits" % info_hash_hex)
    params = {"peer_id": "-VT0001-probeprobe00", "port": 1, "uploaded": 0, "downloaded": 0, "left": 0,
              "compact": 1, "numwant": 0}
    base = "%s?info_hash=%s&" % (url, urllib.parse.quote_from_bytes(info_hash))
    with urllib.request.urlopen(base + urllib.parse.urlencode(params), timeout=timeout) as resp:
        raw = resp.read(MAX_ANSWER)
    params["event"] = "stopped"
    with urllib.request.urlopen(base + urllib.parse.urlencode(params), timeout=timeout) as resp:
        resp.read(MAX_ANSWER)
    failure = None
    marker = b"14:failure reason"
    if marker in raw:
        rest = raw[raw.index(marker) + len(marker):]
        length, _sep, tail = rest.partition(b":")
        failure = tail[:int(length)].decode("utf-8", "replace") if length.isdigit() else "unparsable failure"
    return {"ok": failure is None and raw.startswith(b"d"), "failure": failure,
            "raw": raw[:200].decode("latin-1")}


def main(argv=None):
    """Command line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "announce":
        sys.stderr.write("usage: probe.py announce URL INFOHASH_HEX\n")
        return 2
    print(json.dumps(announce(argv[1], argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
