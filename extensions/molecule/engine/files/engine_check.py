#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drive a host's engine service through its socket for the molecule scenarios (verify step).

Uses the code the engine role installed (``--lib``, default /usr/local/lib/vmic-fleet), so the
check runs with the host's own libtorrent:

    engine_check.py ping
    engine_check.py make --file F --tracker URL --torrent OUT --whitelist OUT
    engine_check.py add --torrent F --save-dir D [--seed-mode]
    engine_check.py wait --torrent F --timeout S         (until complete; prints the status)
    engine_check.py remove --torrent F [--delete-files]

Every command prints one JSON object.
"""

import argparse
import hashlib
import json
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(prog="engine_check")
    parser.add_argument("--lib", default="/usr/local/lib/vmic-fleet")
    parser.add_argument("--socket", default="/run/vmic-engine/engine.sock")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ping")
    make = sub.add_parser("make")
    make.add_argument("--file", required=True)
    make.add_argument("--tracker", required=True)
    make.add_argument("--torrent", required=True)
    make.add_argument("--whitelist", required=True)
    add = sub.add_parser("add")
    add.add_argument("--torrent", required=True)
    add.add_argument("--save-dir", required=True)
    add.add_argument("--seed-mode", action="store_true")
    wait = sub.add_parser("wait")
    wait.add_argument("--torrent", required=True)
    wait.add_argument("--timeout", type=float, default=120)
    remove = sub.add_parser("remove")
    remove.add_argument("--torrent", required=True)
    remove.add_argument("--delete-files", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, args.lib)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.vmic.fleet.plugins.module_utils.engine import LibtorrentEngineClient
    from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent, parse_torrent, v2_truncated

    client = LibtorrentEngineClient(args.socket)
    if args.command == "ping":
        result = client.ping()
    elif args.command == "make":
        meta = make_torrent(args.file, piece_size=256 * 1024, trackers=[args.tracker])
        with open(args.torrent, "wb") as handle:
            handle.write(meta.data)
        with open(args.whitelist, "w") as handle:
            handle.write("%s\n%s\n" % (meta.info_hash_v1, v2_truncated(meta.info_hash_v2)))
        result = meta.to_dict()
        result.pop("data", None)
    else:
        with open(args.torrent, "rb") as handle:
            meta = parse_torrent(handle.read())
        if args.command == "add":
            result = {"key": client.add(meta.data, args.save_dir, seed_mode=args.seed_mode)}
        elif args.command == "remove":
            client.remove(meta.info_hash_v1, delete_files=args.delete_files)
            result = {"key": meta.info_hash_v1, "removed": True}
        else:
            deadline = time.time() + args.timeout
            while True:
                status = client.status(meta.info_hash_v1)
                if status and status[0]["state"] == "seeding" and status[0]["total_done"] == meta.size:
                    break
                if time.time() > deadline:
                    raise SystemExit("torrent %s not complete within %s s: %s" % (meta.info_hash_v1, args.timeout, json.dumps(status)))
                time.sleep(0.5)
            result = dict(status[0])
            digest = hashlib.sha256()
            with open("%s/%s" % (status[0]["save_dir"], meta.name), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            result["sha256_of_file"] = digest.hexdigest()
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
