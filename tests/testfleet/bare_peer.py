#!/usr/bin/env python
"""A bare libtorrent session in one process: the reference peer of the test fleet.

Used (1) as a baseline peer for the benchmark (``--engine bare``) and (2) as the *corrupting* peer of
the swarm tests: ``--seed-mode --trust-pieces`` seeds a file without hashing it, so a file altered
after the torrent was made is served as it is.  (Plain seed mode would hash each piece lazily the
first time a peer asks for it and refuse to send bad data; ``verified_pieces`` all true skips that.)

Settings follow the engine's data-centre profile: no LSD/UPnP/NAT-PMP/uTP, DHT with internal
bootstrap nodes only (never the public default), private addresses obey rate limits and unchoke
slots (the peer-class filter puts every address in the global class).

It writes ``--status-file`` (JSON, atomically, every 0.5 s): a list with one dict per torrent, in the
field names of the engine's status (see engine_spec), and runs until SIGTERM/SIGINT.

    python3 bare_peer.py --listen 198.18.1.2:6881 --torrent T.torrent --save DIR --status-file S.json \
        [--seed-mode [--trust-pieces]] [--dht-bootstrap 198.18.1.1:6881 ...] [--no-dht] \
        [--peer 198.18.1.1:6881 ...] [--upload-limit B/s] [--download-limit B/s] [--super-seeding]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

import libtorrent as lt  # pylint: disable=import-error

STATUS_INTERVAL = 0.5


def write_json_atomic(path, obj):
    """Write JSON through a temporary file and rename."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, sort_keys=True)
    os.replace(tmp, path)


def session_settings(args):
    """libtorrent settings for a data-centre peer."""
    settings = {
        "listen_interfaces": args.listen,
        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "enable_dht": not args.no_dht,
        "dht_bootstrap_nodes": ",".join(args.dht_bootstrap),
        "dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False, "dht_enforce_node_id": False,
        "dht_prefer_verified_node_ids": False,
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": args.upload_limit, "download_rate_limit": args.download_limit,
        "alert_mask": (lt.alert.category_t.error_notification | lt.alert.category_t.status_notification
                       | lt.alert.category_t.peer_notification | lt.alert.category_t.storage_notification),
        "user_agent": "vmic-testfleet-bare/1",
    }
    if args.upload_slots:
        settings["unchoke_slots_limit"] = args.upload_slots
    return settings


class BarePeer:
    """One session, torrents added at start, status written periodically."""

    def __init__(self, args):
        self.args = args
        self.ses = lt.session(session_settings(args))
        # private/loopback peers would land in the "local" class, which ignores limits and slots
        flt = lt.ip_filter()
        flt.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << lt.session.global_peer_class_id)
        self.ses.set_peer_class_filter(flt)
        self.handles = []
        self.extra = {}
        self.stop = threading.Event()

    def add(self, torrent_path, save_dir):
        """Add one torrent (seed mode when asked)."""
        info = lt.torrent_info(torrent_path)
        atp = lt.add_torrent_params()
        atp.ti = info
        atp.save_path = save_dir
        flags = lt.torrent_flags.default_flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        if self.args.seed_mode:
            flags |= lt.torrent_flags.seed_mode
            if self.args.trust_pieces:
                atp.verified_pieces = [True] * info.num_pieces()
        if self.args.super_seeding:
            flags |= lt.torrent_flags.super_seeding
        atp.flags = flags
        handle = self.ses.add_torrent(atp)
        self.handles.append(handle)
        key = str(info.info_hashes().v1)
        self.extra[key] = {"hashfail_count": 0, "banned_peers": 0, "error": None, "added_at": time.time(),
                           "completed_at": None, "peers": {}}
        for peer in self.args.peer:
            host, _sep, port = peer.rpartition(":")
            handle.connect_peer((host, int(port)))
        return handle

    def _key(self, handle):
        return str(handle.info_hashes().v1)

    def pump_alerts(self):
        """Count hash failures, bans and errors."""
        for alert in self.ses.pop_alerts():
            handle = getattr(alert, "handle", None)
            key = self._key(handle) if handle is not None and handle.is_valid() else None
            extra = self.extra.get(key)
            if extra is None:
                continue
            if isinstance(alert, lt.hash_failed_alert):
                extra["hashfail_count"] += 1
            elif isinstance(alert, lt.peer_ban_alert):
                extra["banned_peers"] += 1
            elif isinstance(alert, (lt.torrent_error_alert, lt.file_error_alert)):
                extra["error"] = alert.message()
            elif isinstance(alert, lt.torrent_finished_alert) and extra["completed_at"] is None:
                extra["completed_at"] = time.time()

    def status(self):
        """One dict per torrent, engine status field names."""
        out = []
        for handle in self.handles:
            st = handle.status()
            key = self._key(handle)
            extra = self.extra[key]
            peers = extra["peers"]
            for peer in handle.get_peer_info():
                pkey = "%s:%d" % tuple(peer.ip) + (":web" if int(peer.connection_type) != int(lt.peer_info.standard_bittorrent) else "")
                rec = peers.setdefault(pkey, {"down": 0, "seed": False, "web": int(peer.connection_type) != int(lt.peer_info.standard_bittorrent)})
                rec["down"] = max(rec["down"], peer.total_download)
                rec["seed"] = rec["seed"] or bool(peer.flags & lt.peer_info.seed)
            if st.errc.value() and not extra["error"]:
                extra["error"] = st.errc.message()
            state = ("error" if extra["error"] else "checking" if st.state in (
                lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data)
                else "paused" if st.flags & lt.torrent_flags.paused
                else "seeding" if st.is_seeding else "downloading")
            if st.is_seeding and extra["completed_at"] is None and not self.args.seed_mode:
                extra["completed_at"] = time.time()
            ihs = handle.info_hashes()
            out.append({
                "key": key, "info_hash_v1": key, "info_hash_v2": str(ihs.v2), "name": st.name,
                "save_dir": st.save_path, "state": state, "progress": st.progress,
                "total_size": st.total_wanted, "total_done": st.total_done,
                "bytes_from_peers": sum(p["down"] for p in peers.values() if not p["web"]),
                "bytes_from_web_seed": sum(p["down"] for p in peers.values() if p["web"]),
                "bytes_from_seeds": sum(p["down"] for p in peers.values() if p["seed"] and not p["web"]),
                "payload_download": st.total_payload_download,
                "upload_total": st.total_payload_upload, "num_peers": st.num_peers, "num_seeds": st.num_seeds,
                "download_rate": st.download_payload_rate, "upload_rate": st.upload_payload_rate,
                "hashfail_count": extra["hashfail_count"], "banned_peers": extra["banned_peers"],
                "error": extra["error"], "added_at": extra["added_at"], "completed_at": extra["completed_at"],
            })
        return out

    def run(self):
        """Loop until stopped."""
        while not self.stop.is_set():
            self.pump_alerts()
            if self.args.status_file:
                write_json_atomic(self.args.status_file, self.status())
            self.stop.wait(STATUS_INTERVAL)
        self.pump_alerts()
        if self.args.status_file:
            write_json_atomic(self.args.status_file, self.status())


def main(argv=None):
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--listen", required=True, help="addr:port")
    parser.add_argument("--torrent", action="append", default=[], required=True)
    parser.add_argument("--save", required=True)
    parser.add_argument("--status-file")
    parser.add_argument("--seed-mode", action="store_true")
    parser.add_argument("--trust-pieces", action="store_true",
                        help="with --seed-mode: never hash, serve the file as it is (corrupting peer)")
    parser.add_argument("--super-seeding", action="store_true")
    parser.add_argument("--dht-bootstrap", action="append", default=[])
    parser.add_argument("--no-dht", action="store_true")
    parser.add_argument("--peer", action="append", default=[], help="addr:port to connect to")
    parser.add_argument("--upload-limit", type=int, default=0)
    parser.add_argument("--download-limit", type=int, default=0)
    parser.add_argument("--upload-slots", type=int, default=0)
    args = parser.parse_args(argv)
    peer = BarePeer(args)

    def on_signal(_signum, _frame):
        peer.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for path in args.torrent:
        peer.add(path, args.save)
    peer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
