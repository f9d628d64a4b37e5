# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libtorrent engine service: one per hypervisor, downloads images and keeps seeding them.

Run::

    python3 -m ansible_collections.vmic.fleet.plugins.module_utils.engine_service --config FILE

(PYTHONPATH must contain the directory that holds ``ansible_collections/``), or call ``main(argv)``.
It logs to stderr and exits cleanly (resume data saved) on SIGTERM or SIGINT.

Configuration: a JSON object (at most 64 KiB); unknown keys are refused.  Keys and defaults:

- ``socket`` ["/run/vmic-engine/engine.sock"]: unix socket of the JSON-lines protocol, mode 0600.
- ``state_dir`` ["/var/lib/vmic-engine"]: per torrent ``<key>.torrent`` (the bytes added),
  ``<key>.resume`` (libtorrent resume data) and ``<key>.state.json`` (save_dir, times, counters).
- ``listen_interfaces`` [["0.0.0.0:6881"]]: "ip:port" strings (IPv6 as "[addr]:port").
- ``dht`` [true]; ``dht_bootstrap_nodes`` [[]]: "host:port" strings of internal DHT nodes
  (libtorrent's public bootstrap default is always replaced).
- ``pex`` [true].  LSD, UPnP, NAT-PMP and uTP are always off.
- ``max_download_peers`` [5]: a downloading torrent is connected to (so downloads from) at most
  this many peers, web seeds included; 0 = no limit.  See ``docs/engine.md``.
- ``max_upload_slots`` [10]: peers unchoked (uploaded to) at once, whole engine.
- ``connections_limit`` [200]: connections of the whole engine (seeding torrents are limited by it).
- ``upload_rate_limit``, ``download_rate_limit`` [0 = unlimited]: bytes/s, whole engine, applied
  to every peer including private and loopback addresses.
- ``super_seeding`` [false]: BEP 16 super-seeding for torrents this engine seeds.
- ``resume_interval`` [5]: seconds between resume-data saves of changed torrents (a save also
  follows every ``resume_piece_burst`` [16] verified pieces, completion, moves and SIGTERM).
- ``rotate_interval`` [15]: seconds between checks that replace one useless peer of a downloading
  torrent that is at its ``max_download_peers`` limit.
- ``request_timeout`` [10], ``piece_timeout`` [10], ``peer_connect_timeout`` [3],
  ``inactivity_timeout`` [120]: seconds; tuned for a data centre, where a peer that does not answer
  within seconds is overloaded or gone.
- ``log_level`` ["INFO"].

Protocol: one JSON object per line (at most 16 MiB) with ``op`` in add, status, move, remove,
ping; one JSON object per line back, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

- add: ``torrent`` (base64 of the .torrent), ``save_dir`` (absolute, existing), ``seed_mode``
  (bool, optional) -> ``key``, ``added`` (false when it was already present).
- status: ``key`` (optional) -> ``torrents`` (list of status dicts; empty for an unknown key).
- move: ``key``, ``dest_dir`` (absolute, existing, same filesystem) -> returns when moved.
- remove: ``key``, ``delete_files`` (bool, optional) -> returns when removed.
- ping -> ``engine``, ``version``, ``torrents``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.engine import MAX_REQUEST_BYTES, STATUS_FIELDS
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, LimitError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.libtorrent_dep import import_libtorrent
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import MAX_TORRENT_BYTES, parse_torrent

LOG = logging.getLogger("vmic.engine")

MAX_CONFIG_BYTES = 64 * 1024
MAX_STATE_BYTES = 64 * 1024
MAX_RESUME_BYTES = 32 * 1024 * 1024
WAIT_SECONDS = 25
TICK_SECONDS = 1.0
ALERT_POLL_SECONDS = 0.1

DEFAULTS = {
    "socket": "/run/vmic-engine/engine.sock",
    "state_dir": "/var/lib/vmic-engine",
    "listen_interfaces": ["0.0.0.0:6881"],
    "dht": True,
    "dht_bootstrap_nodes": [],
    "pex": True,
    "max_download_peers": 5,
    "max_upload_slots": 10,
    "connections_limit": 200,
    "upload_rate_limit": 0,
    "download_rate_limit": 0,
    "super_seeding": False,
    "resume_interval": 5,
    "resume_piece_burst": 16,
    "rotate_interval": 15,
    "request_timeout": 10,
    "piece_timeout": 10,
    "peer_connect_timeout": 3,
    "inactivity_timeout": 120,
    "log_level": "INFO",
}

_KEY = re.compile(r"^[0-9a-f]{40}$")
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")

# libtorrent choker values (settings_pack::choking_algorithm_t / seed_choking_algorithm_t)
FIXED_SLOTS_CHOKER = 0
ROUND_ROBIN = 0


# --------------------------------------------------------------------------- configuration


def _check_type(config, key, kinds, what):
    value = config[key]
    if isinstance(value, bool) and bool not in kinds:
        raise EngineError("%s: %s must be %s" % (what, key, " or ".join(k.__name__ for k in kinds)))
    if not isinstance(value, kinds):
        raise EngineError("%s: %s must be %s" % (what, key, " or ".join(k.__name__ for k in kinds)))
    return value


def validate_config(raw, what="engine config"):
    """Merge ``raw`` (a dict) over DEFAULTS and check every value; return the merged dict."""
    if not isinstance(raw, dict):
        raise EngineError("%s: not a JSON object" % what)
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise EngineError("%s: unknown keys %s" % (what, ", ".join(unknown)))
    config = dict(DEFAULTS)
    config.update(raw)
    for key in ("socket", "state_dir", "log_level"):
        _check_type(config, key, (str,), what)
    for key in ("socket", "state_dir"):
        if not os.path.isabs(config[key]):
            raise EngineError("%s: %s %r is not an absolute path" % (what, key, config[key]))
    if len(config["socket"].encode("utf-8")) > 100:
        raise EngineError("%s: socket path longer than 100 bytes" % what)
    for key in ("dht", "pex", "super_seeding"):
        _check_type(config, key, (bool,), what)
    for key in ("listen_interfaces", "dht_bootstrap_nodes"):
        values = _check_type(config, key, (list,), what)
        for value in values:
            if not isinstance(value, str) or not _ENDPOINT.match(value):
                raise EngineError("%s: %s entry %r is not host:port" % (what, key, value))
    if not config["listen_interfaces"]:
        raise EngineError("%s: listen_interfaces is empty" % what)
    for key in ("max_download_peers", "max_upload_slots", "connections_limit", "upload_rate_limit", "download_rate_limit",
                "resume_interval", "resume_piece_burst", "rotate_interval", "request_timeout", "piece_timeout",
                "peer_connect_timeout", "inactivity_timeout"):
        value = _check_type(config, key, (int,), what)
        if value < 0 or value > 2 ** 31 - 1:
            raise EngineError("%s: %s %d is out of range" % (what, key, value))
    for key in ("max_upload_slots", "connections_limit", "resume_interval", "rotate_interval", "request_timeout",
                "piece_timeout", "peer_connect_timeout", "inactivity_timeout", "resume_piece_burst"):
        if config[key] < 1:
            raise EngineError("%s: %s must be at least 1" % (what, key))
    if config["log_level"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise EngineError("%s: log_level %r is not DEBUG, INFO, WARNING or ERROR" % (what, config["log_level"]))
    return config


def load_config(path):
    """Read and validate the JSON config file at ``path``."""
    what = "engine config %s" % path
    try:
        data = read_limited(path, MAX_CONFIG_BYTES, what)
    except OSError as exc:
        raise EngineError("%s: %s" % (what, exc.strerror or exc))
    try:
        raw = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise EngineError("%s: not valid JSON: %s" % (what, exc))
    return validate_config(raw, what)


def outgoing_interfaces(listen_interfaces):
    """Bind outgoing connections to the listen addresses, unless the engine listens on any address.

    Without this, a host with several addresses connects from whichever one the routing table
    picks; peers then see an address the tracker never announced (and libtorrent takes a
    connection from its own address for a connection to itself and bans that address).
    """
    hosts = []
    for endpoint in listen_interfaces:
        host = endpoint.rsplit(":", 1)[0].strip("[]")
        if host in ("0.0.0.0", "::"):
            return ""
        if host not in hosts:
            hosts.append(host)
    return ",".join(hosts)


def session_settings(lt, config):
    """The libtorrent settings_pack of the engine (docs/engine.md gives the reason of each one)."""
    cat = lt.alert.category_t
    return {
        "user_agent": "vmic.fleet libtorrent/%s" % lt.__version__,
        "listen_interfaces": ",".join(config["listen_interfaces"]),
        "outgoing_interfaces": outgoing_interfaces(config["listen_interfaces"]),
        "enable_dht": config["dht"],
        "dht_bootstrap_nodes": ",".join(config["dht_bootstrap_nodes"]),
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "unchoke_slots_limit": config["max_upload_slots"],
        "choking_algorithm": FIXED_SLOTS_CHOKER,
        "seed_choking_algorithm": ROUND_ROBIN,
        "connections_limit": config["connections_limit"],
        "upload_rate_limit": config["upload_rate_limit"],
        "download_rate_limit": config["download_rate_limit"],
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "request_timeout": config["request_timeout"],
        "piece_timeout": config["piece_timeout"],
        "peer_connect_timeout": config["peer_connect_timeout"],
        "inactivity_timeout": config["inactivity_timeout"],
        "min_reconnect_time": 5,
        "close_redundant_connections": True,
        "allow_multiple_connections_per_ip": False,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "alert_queue_size": 10000,
        "alert_mask": int(cat.error_notification | cat.peer_notification | cat.status_notification | cat.storage_notification
                          | cat.connect_notification | cat.piece_progress_notification | cat.tracker_notification),
    }


def apply_peer_classes(lt, session):
    """Put every address, private and loopback included, in the global peer class.

    libtorrent's default filter gives private, link-local and loopback addresses the "local"
    class, which has no rate limit and ignores unchoke slots; in a data centre every peer is
    "local", so the caps would apply to no one.  The local class is also neutralised in case a
    future default filter maps something to it again.
    """
    glob = 1 << session.global_peer_class_id
    flt = lt.ip_filter()
    flt.add_rule("0.0.0.0", "255.255.255.255", glob)
    flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", glob)
    session.set_peer_class_filter(flt)
    local = session.get_peer_class(session.local_peer_class_id)
    local.update({"ignore_unchoke_slots": False, "connection_limit_factor": 100})
    session.set_peer_class(session.local_peer_class_id, local)


# --------------------------------------------------------------------------- torrents


class TorrentRecord(object):
    """The engine's own bookkeeping for one torrent (libtorrent keeps the rest)."""

    COUNTERS = ("bytes_from_peers", "bytes_from_seeds", "bytes_from_web_seed", "hashfail_count", "banned_peers")

    def __init__(self, key, meta, handle, save_dir, state):
        self.key = key
        self.meta = meta
        self.handle = handle
        self.save_dir = save_dir
        self.seed_mode = bool(state.get("seed_mode", False))
        self.added_at = float(state.get("added_at") or time.time())
        self.completed_at = state.get("completed_at")
        self.moving_to = None
        self.counters = dict((name, int(state.get(name, 0))) for name in self.COUNTERS)
        self.peers = {}              # (ip, port, kind) -> (last total_download, category)
        self.attributed = 0          # payload bytes of this session attributed to a category
        self.disconnected = []       # categories of peers gone since the last sample
        self.pieces_since_save = 0
        self.resume_pending = 0           # save_resume_data requests without an answer yet
        self.state_written = None
        self.last_rotate = time.time()
        self.rotating = False
        self.last_payload = 0
        self.file_error = None       # last storage error (a full disk does not set the torrent's error code)

    def state_dict(self):
        """What goes into <key>.state.json."""
        state = {
            "key": self.key,
            "save_dir": self.save_dir,
            "seed_mode": self.seed_mode,
            "added_at": self.added_at,
            "completed_at": self.completed_at,
        }
        if self.moving_to:
            state["moving_to"] = self.moving_to
        state.update(self.counters)
        return state


def _categorise(lt, info):
    if info.connection_type in (lt.peer_info.web_seed, lt.peer_info.http_seed):
        return "web"
    return "seed" if info.flags & lt.peer_info.seed else "peer"


class EngineService(object):
    """A libtorrent session, its torrents and the unix-socket request handler."""

    OPS = ("add", "status", "move", "remove", "ping")

    def __init__(self, config):
        self.config = config
        self.lt = import_libtorrent()
        self.session = None
        self.server = None
        self.lock = threading.RLock()
        self.sample_lock = threading.Lock()   # one sample at a time: the tick and status requests both sample
        self.torrents = {}
        self.waiters = {}
        self.stopping = threading.Event()
        self.last_resume = time.time()

    # ---- files of the state directory

    def _path(self, key, suffix):
        return os.path.join(self.config["state_dir"], key + suffix)

    def _write_state(self, record, force=False):
        state = record.state_dict()
        if not force and state == record.state_written:
            return
        write_atomic(self._path(record.key, ".state.json"), json.dumps(state, sort_keys=True).encode("utf-8"), mode=0o600)
        record.state_written = state

    def _forget_files(self, key):
        for suffix in (".torrent", ".resume", ".state.json"):
            try:
                os.unlink(self._path(key, suffix))
            except FileNotFoundError:
                pass

    # ---- start and stop

    def start(self):
        """Create the session, re-add the torrents of state_dir and open the socket."""
        lt = self.lt
        os.makedirs(self.config["state_dir"], mode=0o700, exist_ok=True)
        self.session = lt.session(session_settings(lt, self.config))
        apply_peer_classes(lt, self.session)
        self._load_state_dir()
        self._open_socket()
        LOG.info("engine started: libtorrent %s, %d torrents, socket %s", lt.__version__, len(self.torrents), self.config["socket"])

    def _load_state_dir(self):
        for entry in sorted(os.listdir(self.config["state_dir"])):
            if not entry.endswith(".torrent") or not _KEY.match(entry[:-8]):
                continue
            key = entry[:-8]
            try:
                self._restore(key)
            except (VmicError, OSError, RuntimeError, ValueError) as exc:
                LOG.error("torrent %s: not restored from %s: %s", key, self.config["state_dir"], exc)

    def _restore(self, key):
        lt = self.lt
        data = read_limited(self._path(key, ".torrent"), MAX_TORRENT_BYTES, "torrent %s" % key)
        meta = parse_torrent(data, what="torrent %s" % key)
        if meta.info_hash_v1 != key:
            raise EngineError("stored torrent has info-hash %s" % meta.info_hash_v1)
        state = json.loads(read_limited(self._path(key, ".state.json"), MAX_STATE_BYTES, "state of %s" % key).decode("utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("save_dir"), str):
            raise EngineError("state file has no save_dir")
        save_dir = state["save_dir"]
        moving_to = state.get("moving_to")
        if moving_to and not os.path.exists(os.path.join(save_dir, meta.name)) \
                and os.path.exists(os.path.join(moving_to, meta.name)):
            # the engine stopped between the rename of a move and the save of its resume data
            LOG.warning("torrent %s: completing the interrupted move to %s", key, moving_to)
            save_dir = moving_to
        params = None
        resume_path = self._path(key, ".resume")
        if os.path.exists(resume_path):
            try:
                params = lt.read_resume_data(read_limited(resume_path, MAX_RESUME_BYTES, "resume data of %s" % key))
                if str(params.info_hashes.v1) != key:
                    raise EngineError("resume data is for %s" % params.info_hashes.v1)
            except (RuntimeError, VmicError) as exc:
                LOG.warning("torrent %s: resume data ignored, existing data will be re-checked: %s", key, exc)
                params = None
        # without resume data, a torrent added in seed mode is trusted again; any other is re-checked
        seed_mode = bool(state.get("seed_mode")) and params is None
        if params is None:
            params = lt.add_torrent_params()
        record = self._add_to_session(key, meta, params, save_dir, state, seed_mode)
        record.moving_to = None
        self._write_state(record)
        LOG.info("torrent %s (%s): restored into %s", key, meta.name, save_dir)

    def _add_to_session(self, key, meta, params, save_dir, state, seed_mode):
        lt = self.lt
        params.ti = lt.torrent_info(meta.data)
        params.save_path = save_dir
        flags = params.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused & ~lt.torrent_flags.duplicate_is_error
        flags &= ~lt.torrent_flags.seed_mode & ~lt.torrent_flags.super_seeding & ~lt.torrent_flags.disable_pex
        if seed_mode:
            flags |= lt.torrent_flags.seed_mode
        if self.config["super_seeding"]:
            flags |= lt.torrent_flags.super_seeding
        if not self.config["pex"]:
            flags |= lt.torrent_flags.disable_pex
        params.flags = flags
        params.max_uploads = self.config["max_upload_slots"]
        handle = self.session.add_torrent(params)
        record = TorrentRecord(key, meta, handle, save_dir, state)
        with self.lock:
            self.torrents[key] = record
        self._apply_connection_limit(record, handle.status())
        return record

    def _apply_connection_limit(self, record, status):
        cap = self.config["max_download_peers"]
        if cap and not (status.is_seeding or status.is_finished):
            record.handle.set_max_connections(cap)
        else:
            record.handle.set_max_connections(-1)

    def _open_socket(self):
        path = self.config["socket"]
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)    # stale socket of an engine that died
            else:
                raise EngineError("socket %s: another engine is listening" % path)
            finally:
                probe.close()
        old_umask = os.umask(0o177)
        try:
            self.server = _Server(path, _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.server.service = self
        thread = threading.Thread(target=self.server.serve_forever, name="engine-socket", daemon=True)
        thread.start()

    def run(self):
        """Handle alerts and periodic work until stop() is called; then shut down."""
        next_tick = time.time()
        try:
            while not self.stopping.is_set():
                # Poll instead of session.wait_for_alert(): with Debian's libtorrent 2.0.8 bindings,
                # wait_for_alert in this thread while a request thread adds a torrent crashed the
                # process (SIGSEGV); pop_alerts from this one thread is safe.
                self.stopping.wait(ALERT_POLL_SECONDS)
                self._handle_alerts()
                if time.time() >= next_tick:
                    next_tick = time.time() + TICK_SECONDS
                    self._tick()
        finally:
            self.shutdown()

    def stop(self, *_args):
        """Ask run() to return (signal handler)."""
        self.stopping.set()

    def shutdown(self):
        """Close the socket, save the resume data of every torrent, drop the session."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            try:
                os.unlink(self.config["socket"])
            except OSError:
                pass
            self.server = None
        if self.session is None:
            return
        self.session.pause()
        with self.lock:
            records = [r for r in self.torrents.values() if r is not None]
        for record in records:
            self._sample(record)
            self._save_resume(record, force=True)
        deadline = time.time() + 10
        while time.time() < deadline and any(r.resume_pending > 0 for r in records):
            time.sleep(ALERT_POLL_SECONDS)
            self._handle_alerts()
        for record in records:
            try:
                self._write_state(record)
            except OSError as exc:
                LOG.error("torrent %s: state not saved: %s", record.key, exc)
        self.session = None
        LOG.info("engine stopped")

    # ---- resume data and periodic work

    def _save_resume(self, record, force=False):
        """Ask libtorrent for resume data (written by the alert handler); ``force`` even if unchanged or pending."""
        with self.lock:
            if not record.handle.is_valid() or record.resume_pending and not force:
                return
            if not force and not record.pieces_since_save and not record.handle.need_save_resume_data():
                return
            record.resume_pending += 1
            record.pieces_since_save = 0
        record.handle.save_resume_data(self.lt.save_resume_flags_t.flush_disk_cache)

    def _tick(self):
        now = time.time()
        with self.lock:
            records = [r for r in self.torrents.values() if r is not None]
        save_all = now - self.last_resume >= self.config["resume_interval"]
        for record in records:
            if not record.handle.is_valid():
                continue
            status = self._sample(record)
            if status is None:
                continue
            if record.completed_at is None and (status.is_seeding or status.is_finished):
                record.completed_at = now
                self._apply_connection_limit(record, status)
                self._save_resume(record, force=True)
            self._rotate(record, status, now)
            if save_all:
                self._save_resume(record)
                try:
                    self._write_state(record)
                except OSError as exc:
                    LOG.error("torrent %s: state not saved: %s", record.key, exc)
        if save_all:
            self.last_resume = now

    def _sample(self, record):
        """Attribute payload bytes received since the last sample to peers, seeds and web seeds.

        libtorrent counts payload per connection (peer_info.total_download) and per torrent
        (torrent_status.total_payload_download), not per kind of source; the per-connection
        totals are sampled every second, and what a connection received between its last sample
        and its disconnection is taken from the torrent total and given to the kind of the
        connections that closed in that interval (a non-seed peer if the connection never lived
        through a sample).
        """
        with self.sample_lock:
            return self._sample_locked(record)

    def _sample_locked(self, record):
        lt = self.lt
        try:
            infos = record.handle.get_peer_info()
            status = record.handle.status()
        except RuntimeError:
            return None
        with self.lock:
            seen = {}
            for info in infos:
                category = _categorise(lt, info)
                ident = (info.ip[0], info.ip[1], category == "web")
                last, _old = record.peers.get(ident, (0, category))
                total = info.total_download
                if total < last:
                    last = 0         # a new connection from the same endpoint
                self._credit(record, category, total - last)
                seen[ident] = (total, category)
            record.peers = seen
            residual = status.total_payload_download - record.attributed
            if residual > 0 and record.disconnected:
                self._credit(record, record.disconnected[-1], residual)
            record.disconnected = []
        return status

    @staticmethod
    def _credit(record, category, amount):
        if amount <= 0:
            return
        record.attributed += amount
        if category == "web":
            record.counters["bytes_from_web_seed"] += amount
        else:
            record.counters["bytes_from_peers"] += amount
            if category == "seed":
                record.counters["bytes_from_seeds"] += amount

    def _rotate(self, record, status, now):
        """Replace the least useful peer of a downloading torrent that is at its peer limit.

        libtorrent's own peer turnover is off for torrents allowed fewer than 6 connections; here
        the limit is lowered by one for one tick (libtorrent then drops the peer it values least:
        first one that has nothing we want, then the slowest) and restored, so a new candidate can
        connect.  The limit is never exceeded.
        """
        cap = self.config["max_download_peers"]
        if record.rotating:
            record.rotating = False
            record.handle.set_max_connections(cap)
            return
        if cap < 2 or status.is_seeding or status.is_finished or status.num_peers < cap:
            return
        if now - record.last_rotate < self.config["rotate_interval"]:
            return
        record.last_rotate = now
        progress = status.total_payload_download - record.last_payload
        record.last_payload = status.total_payload_download
        useless = any(not info.flags & self.lt.peer_info.interesting for info in record.handle.get_peer_info())
        if useless or progress <= 0:
            LOG.debug("torrent %s: rotating one of %d peers", record.key, status.num_peers)
            record.rotating = True
            record.handle.set_max_connections(cap - 1)

    # ---- alerts

    def _record_of(self, alert):
        try:
            key = str(alert.handle.info_hashes().v1)
        except RuntimeError:
            return None
        with self.lock:
            return self.torrents.get(key)

    def _wake(self, kind, key, result):
        with self.lock:
            waiter = self.waiters.pop((kind, key), None)
        if waiter is not None:
            waiter[1].append(result)
            waiter[0].set()

    def _expect(self, kind, key):
        waiter = (threading.Event(), [])
        with self.lock:
            if (kind, key) in self.waiters:
                raise EngineError("torrent %s: another %s is in progress" % (key, kind))
            self.waiters[(kind, key)] = waiter
        return waiter

    def _wait(self, waiter, kind, key):
        if not waiter[0].wait(WAIT_SECONDS):
            with self.lock:
                self.waiters.pop((kind, key), None)
            raise EngineError("torrent %s: %s did not finish within %d s" % (key, kind, WAIT_SECONDS))
        return waiter[1][0]

    def _handle_alerts(self):
        lt = self.lt
        for alert in self.session.pop_alerts():
            try:
                self._handle_alert(lt, alert)
            except (OSError, RuntimeError, VmicError) as exc:
                LOG.error("alert %s: %s", type(alert).__name__, exc)

    def _handle_alert(self, lt, alert):
        if isinstance(alert, (lt.torrent_removed_alert, lt.torrent_deleted_alert, lt.torrent_delete_failed_alert)):
            key = str(alert.info_hashes.v1)
            if isinstance(alert, lt.torrent_removed_alert):
                self._wake("remove", key, None)
            elif isinstance(alert, lt.torrent_deleted_alert):
                self._wake("delete", key, None)
            else:
                self._wake("delete", key, alert.message())
            return
        if isinstance(alert, lt.listen_failed_alert):
            LOG.error("%s", alert.message())
            return
        if isinstance(alert, lt.listen_succeeded_alert):
            LOG.info("%s", alert.message())
            return
        record = self._record_of(alert) if hasattr(alert, "handle") else None
        if record is None:
            return
        if isinstance(alert, lt.save_resume_data_alert):
            record.resume_pending = max(0, record.resume_pending - 1)
            write_atomic(self._path(record.key, ".resume"), lt.write_resume_data_buf(alert.params), mode=0o600)
            self._write_state(record)
            self._wake("resume", record.key, alert.params.save_path)
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            record.resume_pending = max(0, record.resume_pending - 1)
            LOG.warning("torrent %s: resume data not saved: %s", record.key, alert.message())
            self._wake("resume", record.key, None)
        elif isinstance(alert, lt.piece_finished_alert):
            record.pieces_since_save += 1
            if record.pieces_since_save >= self.config["resume_piece_burst"]:
                self._save_resume(record)
        elif isinstance(alert, lt.hash_failed_alert):
            record.counters["hashfail_count"] += 1
            LOG.warning("torrent %s: piece %d failed the hash check", record.key, alert.piece_index)
        elif isinstance(alert, lt.peer_ban_alert):
            record.counters["banned_peers"] += 1
            LOG.warning("torrent %s: banned peer %s", record.key, alert.endpoint)
        elif isinstance(alert, lt.peer_disconnected_alert):
            endpoint = tuple(alert.endpoint)
            with self.lock:
                # a connection that never lived through a sample counts as a non-seed peer
                categories = [category for ident, (_total, category) in record.peers.items() if (ident[0], ident[1]) == endpoint]
                record.disconnected.append(categories[0] if categories else "peer")
        elif isinstance(alert, lt.torrent_finished_alert):
            if record.completed_at is None:
                record.completed_at = time.time()
            self._apply_connection_limit(record, record.handle.status())
            self._save_resume(record, force=True)
            LOG.info("torrent %s (%s): complete", record.key, record.meta.name)
        elif isinstance(alert, lt.storage_moved_alert):
            self._wake("move", record.key, None)
        elif isinstance(alert, lt.storage_moved_failed_alert):
            self._wake("move", record.key, "%s: %s" % (alert.file_path, alert.message()))
        elif isinstance(alert, lt.file_error_alert):
            # libtorrent stops writing but leaves the torrent's error code clear (seen with ENOSPC):
            # keep the reason so that status reports it instead of a download that never ends.
            record.file_error = alert.message()
            LOG.error("torrent %s: %s", record.key, alert.message())
        elif isinstance(alert, (lt.torrent_error_alert, lt.fastresume_rejected_alert)):
            LOG.error("torrent %s: %s", record.key, alert.message())
        elif isinstance(alert, lt.tracker_error_alert):
            LOG.warning("torrent %s: %s", record.key, alert.message())

    # ---- requests

    def handle_request(self, request):
        """Validate and run one request dict; return the response dict."""
        try:
            if not isinstance(request, dict):
                raise EngineError("request is not a JSON object")
            op = request.get("op")
            if op not in self.OPS:
                raise EngineError("unknown op %r" % (op,))
            return getattr(self, "op_" + op)(request)
        except (VmicError, OSError, RuntimeError) as exc:
            return {"ok": False, "error": str(exc)}

    @staticmethod
    def _fields(request, required, optional=()):
        unknown = sorted(set(request) - set(required) - set(optional) - {"op"})
        if unknown:
            raise EngineError("%s: unknown fields %s" % (request["op"], ", ".join(unknown)))
        missing = [name for name in required if name not in request]
        if missing:
            raise EngineError("%s: missing fields %s" % (request["op"], ", ".join(missing)))

    @staticmethod
    def _key(request):
        key = request.get("key")
        if not isinstance(key, str) or not _KEY.match(key):
            raise EngineError("%s: key %r is not a v1 info-hash (40 lower-case hex)" % (request["op"], key))
        return key

    @staticmethod
    def _bool(request, name):
        value = request.get(name, False)
        if not isinstance(value, bool):
            raise EngineError("%s: %s is not a boolean" % (request["op"], name))
        return value

    @staticmethod
    def _dir(request, name):
        path = request.get(name)
        if not isinstance(path, str) or not os.path.isabs(path) or "\x00" in path:
            raise EngineError("%s: %s %r is not an absolute path" % (request["op"], name, path))
        path = os.path.normpath(path)
        if not os.path.isdir(path):
            raise EngineError("%s: %s %s is not an existing directory" % (request["op"], name, path))
        return path

    def _get(self, key, op):
        with self.lock:
            record = self.torrents.get(key)
        if record is None:
            raise EngineError("%s: torrent %s is not in the engine" % (op, key))
        return record

    def op_ping(self, request):
        """Liveness and version."""
        self._fields(request, ())
        with self.lock:
            count = len([r for r in self.torrents.values() if r is not None])
        return {"ok": True, "engine": "libtorrent", "version": self.lt.__version__, "torrents": count}

    def op_add(self, request):
        """Add a torrent; idempotent for a torrent already present."""
        self._fields(request, ("torrent", "save_dir"), ("seed_mode",))
        encoded = request["torrent"]
        if not isinstance(encoded, str):
            raise EngineError("add: torrent is not a base64 string")
        if len(encoded) > (MAX_TORRENT_BYTES + 2) // 3 * 4:
            raise LimitError("add: torrent larger than %d bytes" % MAX_TORRENT_BYTES)
        try:
            data = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise EngineError("add: torrent is not valid base64")
        save_dir = self._dir(request, "save_dir")
        seed_mode = self._bool(request, "seed_mode")
        meta = parse_torrent(data, what="add: torrent")
        key = meta.info_hash_v1
        with self.lock:
            if key in self.torrents:
                return {"ok": True, "key": key, "added": False}
            self.torrents[key] = None      # reserve the key against a concurrent add
        record = None
        try:
            if seed_mode:
                target = os.path.join(save_dir, meta.name)
                if not os.path.isfile(target) or os.path.getsize(target) != meta.size:
                    raise EngineError("add: seed_mode needs %s with %d bytes" % (target, meta.size))
            state = {"save_dir": save_dir, "seed_mode": seed_mode, "added_at": time.time()}
            write_atomic(self._path(key, ".torrent"), data, mode=0o600)
            record = self._add_to_session(key, meta, self.lt.add_torrent_params(), save_dir, state, seed_mode)
            if seed_mode:
                record.completed_at = record.added_at
            self._write_state(record, force=True)
            self._save_resume(record, force=True)
        except BaseException:
            with self.lock:
                self.torrents.pop(key, None)
            if record is not None:
                self.session.remove_torrent(record.handle)
            self._forget_files(key)
            raise
        LOG.info("torrent %s (%s): added into %s%s", key, meta.name, save_dir, " in seed mode" if seed_mode else "")
        return {"ok": True, "key": key, "added": True}

    def op_status(self, request):
        """Status of one or all torrents."""
        self._fields(request, (), ("key",))
        with self.lock:
            if "key" in request:
                key = self._key(request)
                records = [self.torrents[key]] if self.torrents.get(key) is not None else []
            else:
                records = [r for r in self.torrents.values() if r is not None]
        return {"ok": True, "torrents": [self._status_dict(r) for r in records]}

    def _verified_bytes(self, record, status):
        """Bytes of pieces that passed the hash check (libtorrent's total_done also counts unchecked blocks)."""
        if status.is_seeding:
            return record.meta.size
        piece = record.meta.piece_size
        last = (record.meta.size - 1) // piece
        done = int(status.num_pieces) * piece
        try:
            if status.num_pieces and record.handle.have_piece(last):
                done -= piece - (record.meta.size - last * piece)
        except RuntimeError:
            pass
        return max(0, min(done, record.meta.size))

    def _status_dict(self, record):
        lt = self.lt
        self._sample(record)     # counters as of this request, not of the last periodic sample
        status = record.handle.status()
        states = lt.torrent_status.states
        checking = (states.checking_files, states.checking_resume_data, getattr(states, "queued_for_checking", states.checking_files))
        file_error = record.file_error if not (status.is_seeding or status.is_finished) else None
        if status.errc.value() != 0 or file_error:
            state = "error"
        elif status.state in checking:
            state = "checking"
        elif status.flags & lt.torrent_flags.paused:
            state = "paused"
        elif status.is_seeding or status.is_finished:
            state = "seeding"
        else:
            state = "downloading"
        error = None
        if status.errc.value() != 0:
            error = status.errc.message()
            if status.error_file >= 0:
                error = "%s (file %d)" % (error, status.error_file)
        elif file_error:
            error = file_error
        with self.lock:
            counters = dict(record.counters)
        result = {
            "key": record.key,
            "info_hash_v1": record.meta.info_hash_v1,
            "info_hash_v2": record.meta.info_hash_v2,
            "name": record.meta.name,
            "save_dir": record.save_dir,
            "state": state,
            "progress": float(status.progress),
            "total_size": record.meta.size,
            "total_done": self._verified_bytes(record, status),
            "upload_total": int(status.all_time_upload),
            "num_peers": int(status.num_peers),
            "num_seeds": int(status.num_seeds),
            "download_rate": int(status.download_payload_rate),
            "upload_rate": int(status.upload_payload_rate),
            "error": error,
            "added_at": record.added_at,
            # The tick records completion once a second; a status asked in between already says seeding.
            "completed_at": record.completed_at if record.completed_at is not None or state != "seeding" else time.time(),
        }
        result.update(counters)
        return dict((name, result[name]) for name in STATUS_FIELDS)

    def op_move(self, request):
        """move_storage into dest_dir on the same filesystem (a rename), and save resume data."""
        self._fields(request, ("key", "dest_dir"))
        key = self._key(request)
        dest = self._dir(request, "dest_dir")
        record = self._get(key, "move")
        if os.path.realpath(dest) == os.path.realpath(record.save_dir):
            return {"ok": True, "moved": False}
        if os.stat(dest).st_dev != os.stat(record.save_dir).st_dev:
            raise EngineError("move: torrent %s: %s is on another filesystem than %s (a move would copy, not rename)"
                              % (key, dest, record.save_dir))
        target = os.path.join(dest, record.meta.name)
        if os.path.lexists(target):
            raise EngineError("move: torrent %s: %s already exists" % (key, target))
        record.moving_to = dest
        self._write_state(record, force=True)
        waiter = self._expect("move", key)
        record.handle.move_storage(dest, self.lt.move_flags_t.fail_if_exist)
        failure = self._wait(waiter, "move", key)
        record.moving_to = None
        if failure is not None:
            self._write_state(record, force=True)
            raise EngineError("move: torrent %s into %s failed: %s" % (key, dest, failure))
        record.save_dir = dest
        self._write_state(record, force=True)
        # return only once resume data naming the new directory is on disk
        deadline = time.time() + WAIT_SECONDS
        saved = None
        while saved != dest and time.time() < deadline:
            waiter = self._expect("resume", key)
            self._save_resume(record, force=True)
            saved = self._wait(waiter, "resume", key)
        LOG.info("torrent %s (%s): moved into %s", key, record.meta.name, dest)
        return {"ok": True, "moved": True}

    def op_remove(self, request):
        """Remove a torrent (and its data with delete_files)."""
        self._fields(request, ("key",), ("delete_files",))
        key = self._key(request)
        delete_files = self._bool(request, "delete_files")
        record = self._get(key, "remove")
        self._forget_files(key)
        waiter = self._expect("delete" if delete_files else "remove", key)
        with self.lock:
            self.torrents.pop(key, None)
        self.session.remove_torrent(record.handle, self.lt.session.delete_files if delete_files else 0)
        failure = self._wait(waiter, "delete" if delete_files else "remove", key)
        if failure is not None:
            raise EngineError("remove: torrent %s: removed, but its data was not deleted: %s" % (key, failure))
        LOG.info("torrent %s (%s): removed%s", key, record.meta.name, " with its data" if delete_files else "")
        return {"ok": True}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    service = None


class _Handler(socketserver.StreamRequestHandler):
    """One connection: JSON requests, one per line, answered in order."""

    timeout = 300

    def handle(self):
        while True:
            line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES:
                self._reply({"ok": False, "error": "request larger than %d bytes" % MAX_REQUEST_BYTES})
                return
            try:
                request = json.loads(line.decode("utf-8"))
            except ValueError as exc:
                self._reply({"ok": False, "error": "request is not JSON: %s" % exc})
                return
            try:
                response = self.server.service.handle_request(request)
            except Exception as exc:  # pylint: disable=broad-except
                LOG.exception("request %r failed", request.get("op") if isinstance(request, dict) else None)
                response = {"ok": False, "error": "internal error: %s" % exc}
            self._reply(response)

    def _reply(self, response):
        self.wfile.write(json.dumps(response, separators=(",", ":")).encode("utf-8") + b"\n")
        self.wfile.flush()


def main(argv=None):
    """Run the engine service until SIGTERM or SIGINT; return the exit status."""
    parser = argparse.ArgumentParser(prog="vmic-engine", description="vmic.fleet libtorrent engine service")
    parser.add_argument("--config", required=True, help="JSON configuration file")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        logging.getLogger().setLevel(config["log_level"].upper())
        service = EngineService(config)
        signal.signal(signal.SIGTERM, service.stop)
        signal.signal(signal.SIGINT, service.stop)
        service.start()
    except (VmicError, OSError, RuntimeError) as exc:
        LOG.error("engine not started: %s", exc)
        return 1
    service.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
