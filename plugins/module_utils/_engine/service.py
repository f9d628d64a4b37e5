# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine service: one libtorrent session, its torrents, the alerts it handles and the requests it answers.

One thread (``run``) accepts connections, reads libtorrent's alerts and does the periodic work; a
thread per connection answers its requests (``handle_request``) and waits for the alerts that finish
a move or a removal.  The files it keeps are those of ``statedir``; the byte counters follow
``accounting``.

An idle engine costs next to nothing: ``run`` sleeps in ``select`` until libtorrent has an alert
(libtorrent writes a byte to a pipe, ``session.set_alert_fd``: no Python runs in libtorrent's thread
and nothing blocks inside libtorrent, unlike ``wait_for_alert``, which crashed Debian's 2.0.8 while a
request thread added a torrent), a client connects, a request has been answered or it is time for the
periodic work: every second while a torrent downloads, is checked, moves or transfers, every
``IDLE_TICK_SECONDS`` while nothing does.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import select
import threading
import time
import warnings

from ansible_collections.vmic.fleet.plugins.module_utils._engine import accounting
from ansible_collections.vmic.fleet.plugins.module_utils._engine.protocol import (
    check_fields, open_server, request_bool, request_dir, request_key, request_op,
)
from ansible_collections.vmic.fleet.plugins.module_utils._engine.session import apply_peer_classes, session_settings, torrent_flags
from ansible_collections.vmic.fleet.plugins.module_utils._engine.statedir import StateDir
from ansible_collections.vmic.fleet.plugins.module_utils.engine import STATUS_FIELDS
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, LimitError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_TORRENT_BYTES
from ansible_collections.vmic.fleet.plugins.module_utils.libtorrent_dep import import_libtorrent
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import parse_torrent

LOG = logging.getLogger("vmic.engine")

WAIT_SECONDS = 25           # longest a request waits for libtorrent to finish a move, removal or resume save
TICK_SECONDS = 1.0          # byte accounting, completion, peer rotation and resume saves, while anything transfers
IDLE_TICK_SECONDS = 30.0    # the same while nothing does (alerts, connections and requests wake the engine at once)
SHUTDOWN_SECONDS = 10       # longest SIGTERM waits for the resume data of every torrent
DHT_SECONDS = 10.0          # a download short of peers asks the DHT again, an empty routing table its bootstrap nodes, this often
MAX_BASE64_TORRENT = (MAX_TORRENT_BYTES + 2) // 3 * 4


class TorrentRecord(object):
    """The engine's own bookkeeping for one torrent (libtorrent keeps the rest)."""

    COUNTERS = accounting.BYTE_COUNTERS + ("hashfail_count", "banned_peers")

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
        self.last_totals = {}        # (ip, port, is_web) -> (total_download, category) at the last sample
        self.attributed = 0          # payload bytes of this session credited to a category
        self.disconnected = []       # categories of the connections closed since the last sample
        self.pieces_since_save = 0
        self.saved_totals = None     # (all_time_upload, all_time_download) at the last save asked with a status
        self.tick_payload = None     # (total_payload_download, total_payload_upload) at the last periodic work
        self.resume_pending = 0      # save_resume_data requests without an answer yet
        self.state_written = None
        self.last_rotate = time.time()
        self.last_dht_search = time.time()
        self.dht_seen_payload = 0    # total_payload_download at the last look of _seek_peers
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


class EngineService(object):
    """A libtorrent session, its torrents and the unix-socket request handler."""

    def __init__(self, config):
        self.config = config
        self.lt = import_libtorrent()
        self.state = StateDir(config["state_dir"])
        self.session = None
        self.server = None
        self.lock = threading.RLock()
        self.sample_lock = threading.Lock()   # one sample at a time: the tick and status requests both sample
        self.torrents = {}
        self.waiters = {}
        self.stopping = threading.Event()
        self.last_resume = time.time()
        self.idle = False
        self.dial_until = 0.0       # time.monotonic() until which complete torrents dial out too
        self.dialling = False       # the session's seeding_outgoing_connections
        self.last_dht_check = 0.0   # time.time() of the last look at the DHT's routing table
        self.dht_had_nodes = False  # whether the routing table had nodes at that look
        # libtorrent writes to alert_pipe when its alert queue stops being empty; requests and stop() write to wake_pipe
        self.alert_pipe = self.wake_pipe = None
        lt = self.lt
        # alert type -> handler; the alerts of torrents the engine no longer holds are dropped
        self.session_alerts = {
            lt.torrent_removed_alert: self._on_removed,
            lt.torrent_deleted_alert: self._on_deleted,
            lt.torrent_delete_failed_alert: self._on_delete_failed,
            lt.listen_failed_alert: self._log_error,
            lt.listen_succeeded_alert: self._log_info,
            lt.session_stats_alert: self._on_session_stats,
        }
        self.torrent_alerts = {
            lt.save_resume_data_alert: self._on_resume_data,
            lt.save_resume_data_failed_alert: self._on_resume_data_failed,
            lt.piece_finished_alert: self._on_piece_finished,
            lt.hash_failed_alert: self._on_hash_failed,
            lt.peer_ban_alert: self._on_peer_ban,
            lt.peer_disconnected_alert: self._on_peer_disconnected,
            lt.torrent_finished_alert: self._on_finished,
            lt.storage_moved_alert: self._on_moved,
            lt.storage_moved_failed_alert: self._on_move_failed,
            lt.file_error_alert: self._on_file_error,
            lt.torrent_error_alert: self._log_torrent_error,
            lt.fastresume_rejected_alert: self._log_torrent_error,
            lt.tracker_error_alert: self._log_torrent_warning,
        }
        self.ops = {"add": self.op_add, "status": self.op_status, "move": self.op_move, "remove": self.op_remove, "ping": self.op_ping,
                    "stats": self.op_stats}

    # ---- the state directory

    def _write_state(self, record, force=False):
        state = record.state_dict()
        if not force and state == record.state_written:
            return
        self.state.write_state(record.key, state)
        record.state_written = state

    # ---- start and stop

    def start(self):
        """Create the session, re-add the torrents of state_dir and open the socket."""
        lt = self.lt
        self.state.create()
        self.alert_pipe, self.wake_pipe = _pipe(), _pipe()
        self.session = lt.session(session_settings(lt, self.config))
        self.session.set_alert_fd(self.alert_pipe[1])
        apply_peer_classes(lt, self.session)
        self._load_state_dir()
        if self.torrents:
            self._dial_for_a_while()        # the swarms' downloaders may have given up on this address
        self.server = open_server(self.config["socket"], self.handle_request, self._log_crash)
        self.server.timeout = 0     # run() calls handle_request() when select says a connection waits
        LOG.info("engine started: libtorrent %s, %d torrents, socket %s", lt.__version__, len(self.torrents), self.config["socket"])

    def _load_state_dir(self):
        for key in self.state.keys():
            try:
                self._restore(key)
            except (VmicError, OSError, RuntimeError, ValueError) as exc:
                LOG.error("torrent %s: not restored from %s: %s", key, self.config["state_dir"], exc)

    def _restore(self, key):
        lt = self.lt
        meta = parse_torrent(self.state.read_torrent(key), what="torrent %s" % key)
        if meta.info_hash_v1 != key:
            raise EngineError("stored torrent has info-hash %s" % meta.info_hash_v1)
        state = self.state.read_state(key)
        save_dir = state["save_dir"]
        moving_to = state.get("moving_to")
        if moving_to and not os.path.exists(os.path.join(save_dir, meta.name)) \
                and os.path.exists(os.path.join(moving_to, meta.name)):
            # the engine stopped between the rename of a move and the save of its resume data
            LOG.warning("torrent %s: completing the interrupted move to %s", key, moving_to)
            save_dir = moving_to
        params = None
        try:
            resume = self.state.read_resume(key)
            if resume is not None:
                params = lt.read_resume_data(resume)
                if str(params.info_hashes.v1) != key:
                    raise EngineError("resume data is for %s" % params.info_hashes.v1)
                params.ti = meta.params.ti      # resume data carries no info dictionary: the one parsed above
        except (RuntimeError, VmicError) as exc:
            LOG.warning("torrent %s: resume data ignored, existing data will be re-checked: %s", key, exc)
            params = None
        # without resume data, a torrent added in seed mode is trusted again; any other is re-checked
        seed_mode = bool(state.get("seed_mode")) and params is None
        record = self._add_to_session(key, meta, params or meta.params, save_dir, state, seed_mode)
        record.moving_to = None
        self._write_state(record)
        LOG.info("torrent %s (%s): restored into %s", key, meta.name, save_dir)

    def _add_to_session(self, key, meta, params, save_dir, state, seed_mode):
        """Add ``params`` (meta.params, or resume data with meta's torrent_info) to the session and record it."""
        params.save_path = save_dir
        params.flags = torrent_flags(self.lt, params.flags, seed_mode, self.config)
        params.max_uploads = self.config["max_upload_slots"]
        handle = self.session.add_torrent(params)
        record = TorrentRecord(key, meta, handle, save_dir, state)
        with self.lock:
            self.torrents[key] = record
        self._apply_connection_limit(record, handle.status())
        return record

    def _dial_for_a_while(self):
        """Let complete torrents dial peers for ``seed_dial_seconds``: a new or restarted seed reaches the downloaders waiting for it.

        Otherwise complete torrents dial no one: two seeds hang up on each other at the extension handshake,
        before a bitfield marks either as a seed, so libtorrent would redial every peer every
        min_reconnect_time, forever (docs/engine.md, "An all-seed swarm").  Downloaders still dial seeds.
        """
        seconds = self.config["seed_dial_seconds"]
        if seconds > 0:
            with self.lock:
                self.dial_until = time.monotonic() + seconds
                self._set_dialling(True)

    def _set_dialling(self, dialling):
        with self.lock:
            if dialling != self.dialling:
                self.session.apply_settings({"seeding_outgoing_connections": dialling})
                self.dialling = dialling
                LOG.debug("complete torrents %s", "dial peers for %d s" % self.config["seed_dial_seconds"] if dialling else "dial no one")

    def _apply_connection_limit(self, record, status):
        cap = self.config["max_download_peers"]
        if cap and not (status.is_seeding or status.is_finished):
            record.handle.set_max_connections(cap)
        else:
            record.handle.set_max_connections(-1)

    def _records(self):
        with self.lock:
            return [r for r in self.torrents.values() if r is not None]

    def run(self):
        """Handle connections, alerts and periodic work until stop() is called; then shut down."""
        next_tick = time.monotonic()
        waits = [self.server, self.alert_pipe[0], self.wake_pipe[0]]
        try:
            while not self.stopping.is_set():
                readable = select.select(waits, [], [], max(0.0, next_tick - time.monotonic()))[0]
                if self.server in readable:
                    self.server.handle_request()        # accepts; a thread answers the connection
                _drain(self.alert_pipe[0])
                _drain(self.wake_pipe[0])
                # libtorrent empties its queue only when asked: pop before deciding, or the pipe stays quiet
                self._handle_alerts()
                now = time.monotonic()
                if readable:
                    next_tick = min(next_tick, now + TICK_SECONDS)
                if now >= next_tick:
                    self._set_busy(self._tick())
                    next_tick = now + (IDLE_TICK_SECONDS if self.idle else TICK_SECONDS)
                    with self.lock:
                        if self.dialling:       # the periodic work ends the dialling of complete torrents
                            next_tick = min(next_tick, self.dial_until)
        finally:
            self.shutdown()

    def _set_busy(self, reason):
        """Record what the last periodic work found: ``reason`` why the engine is busy, or None (idle)."""
        if (reason is None) != self.idle:
            if reason is None:
                LOG.debug("engine idle: periodic work every %d s", IDLE_TICK_SECONDS)
            else:
                LOG.debug("engine busy (%s): periodic work every second", reason)
        self.idle = reason is None

    def _wake_run(self):
        """Make run() look at the engine now (a request changed something, or stop() was called)."""
        if self.wake_pipe is not None:
            try:
                os.write(self.wake_pipe[1], b"\0")
            except (BlockingIOError, OSError):
                pass        # a full pipe wakes run() already; a closed one belongs to a stopped engine

    def stop(self, *_args):
        """Ask run() to return (signal handler)."""
        self.stopping.set()
        self._wake_run()

    def shutdown(self):
        """Close the socket, save the resume data of every torrent, drop the session."""
        if self.server is not None:
            self.server.server_close()
            try:
                os.unlink(self.config["socket"])
            except OSError:
                pass
            self.server = None
        if self.session is None:
            return
        self.session.pause()
        records = self._records()
        for record in records:
            self._sample(record)
            self._save_resume(record, force=True)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        while any(r.resume_pending > 0 for r in records) and time.monotonic() < deadline:
            select.select([self.alert_pipe[0]], [], [], max(0.0, deadline - time.monotonic()))
            _drain(self.alert_pipe[0])
            self._handle_alerts()
        for record in records:
            try:
                self._write_state(record)
            except OSError as exc:
                LOG.error("torrent %s: state not saved: %s", record.key, exc)
        # libtorrent writes to the alert pipe until the session is gone: close the pipes after it
        self.session = None
        for pipe in (self.alert_pipe, self.wake_pipe):
            for fd in pipe:
                os.close(fd)
        self.alert_pipe = self.wake_pipe = None
        LOG.info("engine stopped")

    # ---- resume data and periodic work

    def _save_resume(self, record, force=False, status=None):
        """Ask libtorrent for resume data (written by the alert handler); ``force`` even if unchanged or pending.

        Without ``force``: only after verified pieces, or after payload moved (``status``: the torrent's status now)
        and libtorrent says the resume data changed.  libtorrent also says so every second for a torrent whose
        active and seeding times grow; those alone are not worth a write, so an idle seed writes nothing.
        """
        with self.lock:
            if not record.handle.is_valid() or record.resume_pending and not force:
                return
            totals = (status.all_time_upload, status.all_time_download) if status is not None else None
            if not force and not record.pieces_since_save \
                    and (totals is None or totals == record.saved_totals or not record.handle.need_save_resume_data()):
                return
            record.resume_pending += 1
            record.pieces_since_save = 0
            if totals is not None:
                record.saved_totals = totals
        record.handle.save_resume_data(self.lt.save_resume_flags_t.flush_disk_cache)

    def _tick(self):
        """The periodic work; return why the engine is busy (a torrent that is not seeding without traffic), or None."""
        now = time.time()
        save_all = now - self.last_resume >= self.config["resume_interval"]
        busy = None
        self._tend_dht(now)
        for record in self._records():
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
            self._seek_peers(record, status, now)
            if save_all:
                self._save_resume(record, status=status)
                try:
                    self._write_state(record)
                except OSError as exc:
                    LOG.error("torrent %s: state not saved: %s", record.key, exc)
            busy = busy or self._busy(record, status)
        if save_all:
            self.last_resume = now
        with self.lock:
            if self.dialling and time.monotonic() >= self.dial_until:
                self._set_dialling(False)
        return busy

    @staticmethod
    def _busy(record, status):
        """Why the torrent keeps the engine busy, or None when it is complete and nothing moves.

        Payload counts as moving when the torrent's totals changed since the previous periodic work
        (libtorrent's rates decay over a minute after the last byte, so they cannot say it stopped).
        """
        payload = (status.total_payload_download, status.total_payload_upload)
        moved, record.tick_payload = payload != record.tick_payload, payload
        if not (status.is_seeding or status.is_finished):
            reason = "not complete"
        elif moved:
            reason = "payload moving"
        elif record.moving_to:
            reason = "moving to %s" % record.moving_to
        elif record.resume_pending > 0:
            reason = "saving resume data"
        elif record.rotating:
            reason = "rotating a peer"
        else:
            return None
        return "torrent %s: %s" % (record.key, reason)

    def _sample(self, record):
        """Credit the payload received since the last sample to peers, seeds and web seeds (``accounting``)."""
        with self.sample_lock:
            lt = self.lt
            try:
                infos = record.handle.get_peer_info()
                status = record.handle.status()
            except RuntimeError:
                return None
            web = (lt.peer_info.web_seed, lt.peer_info.http_seed)
            connections = [(info.ip[0], info.ip[1], accounting.peer_category(info.connection_type in web, info.flags & lt.peer_info.seed),
                            info.total_download) for info in infos]
            with self.lock:
                record.counters, record.attributed, record.last_totals = accounting.attribute(
                    record.counters, record.attributed, record.last_totals, connections, status.total_payload_download, record.disconnected)
                record.disconnected = []
            return status

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

    def _tend_dht(self, now):
        """Keep the DHT able to stand in for a stopped tracker.

        libtorrent announces a torrent to the DHT when it is added and then every dht_announce_interval (15 min).
        An engine that started while its bootstrap nodes were down has an empty routing table, and what it
        announced then went nowhere: with the tracker stopped, downloaders found no one for minutes.  Every
        ``DHT_SECONDS`` an empty routing table asks the bootstrap nodes again; when it has just filled, every
        torrent (seeds included) is announced at once.
        """
        if not self.config["dht"] or now - self.last_dht_check < DHT_SECONDS:
            return
        self.last_dht_check = now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)     # session.status() is the binding's only cheap count
            nodes = self.session.status().dht_nodes
        if not nodes:
            for endpoint in self.config["dht_bootstrap_nodes"]:
                host, _sep, port = endpoint.rpartition(":")
                self.session.add_dht_node((host.strip("[]"), int(port)))
        elif not self.dht_had_nodes:
            LOG.debug("DHT routing table filled (%d nodes): announcing every torrent", nodes)
            for record in self._records():
                if record.handle.is_valid():
                    record.handle.force_dht_announce()
        self.dht_had_nodes = bool(nodes)

    def _seek_peers(self, record, status, now):
        """Ask the DHT again, every ``DHT_SECONDS``, for the peers of a download that is short of them and stalled.

        Downloads that all start at once find no one in their first lookup (nobody has announced yet); without
        a tracker they would wait for the next announce, 15 minutes later.  A download below its peer limit (no
        peer at all when there is no limit) that received no payload since the last look looks again.  One that
        receives data does not: at 450 hosts, downloads of a working swarm that sat one peer below the limit
        (peer rotation keeps them there) sent an announce traversal each (about 1000 DHT messages) every 10 s.
        """
        if not self.config["dht"] or status.is_seeding or status.is_finished or now - record.last_dht_search < DHT_SECONDS:
            return
        record.last_dht_search = now
        received = status.total_payload_download
        moved = received != record.dht_seen_payload
        record.dht_seen_payload = received
        if moved or status.num_peers >= max(1, self.config["max_download_peers"]):
            return
        LOG.debug("torrent %s: no data and %d peer(s): asking the DHT again", record.key, status.num_peers)
        record.handle.force_dht_announce()

    # ---- waiting for libtorrent

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

    # ---- alerts

    def _handle_alerts(self):
        for alert in self.session.pop_alerts():
            try:
                self._dispatch(alert)
            except (OSError, RuntimeError, VmicError) as exc:
                LOG.error("alert %s: %s", type(alert).__name__, exc)

    def _dispatch(self, alert):
        """Hand ``alert`` to the handler of its type; a torrent alert only while the engine holds the torrent."""
        kind = type(alert)
        handler = self.session_alerts.get(kind)
        if handler is not None:
            handler(alert)
            return
        handler = self.torrent_alerts.get(kind)
        if handler is None:
            return
        try:
            key = str(alert.handle.info_hashes().v1)
        except RuntimeError:
            return
        with self.lock:
            record = self.torrents.get(key)
        if record is not None:
            handler(record, alert)

    def _on_removed(self, alert):
        self._wake("remove", str(alert.info_hashes.v1), None)

    def _on_deleted(self, alert):
        self._wake("delete", str(alert.info_hashes.v1), None)

    def _on_delete_failed(self, alert):
        self._wake("delete", str(alert.info_hashes.v1), alert.message())

    def _on_session_stats(self, alert):
        self._wake("stats", "session", dict(alert.values))

    @staticmethod
    def _log_error(alert):
        LOG.error("%s", alert.message())

    @staticmethod
    def _log_info(alert):
        LOG.info("%s", alert.message())

    def _on_resume_data(self, record, alert):
        record.resume_pending = max(0, record.resume_pending - 1)
        self.state.write_resume(record.key, self.lt.write_resume_data_buf(alert.params))
        self._write_state(record)
        self._wake("resume", record.key, alert.params.save_path)

    def _on_resume_data_failed(self, record, alert):
        record.resume_pending = max(0, record.resume_pending - 1)
        LOG.warning("torrent %s: resume data not saved: %s", record.key, alert.message())
        self._wake("resume", record.key, None)

    def _on_piece_finished(self, record, _alert):
        record.pieces_since_save += 1
        if record.pieces_since_save >= self.config["resume_piece_burst"]:
            self._save_resume(record)

    def _on_hash_failed(self, record, alert):
        with self.lock:
            record.counters["hashfail_count"] += 1
        LOG.warning("torrent %s: piece %d failed the hash check", record.key, alert.piece_index)

    def _on_peer_ban(self, record, alert):
        with self.lock:
            record.counters["banned_peers"] += 1
        LOG.warning("torrent %s: banned peer %s", record.key, alert.endpoint)

    def _on_peer_disconnected(self, record, alert):
        ip, port = tuple(alert.endpoint)
        with self.lock:
            record.disconnected.append(accounting.disconnected_category(record.last_totals, ip, port))

    def _on_finished(self, record, _alert):
        if record.completed_at is None:
            record.completed_at = time.time()
        self._apply_connection_limit(record, record.handle.status())
        self._save_resume(record, force=True)
        LOG.info("torrent %s (%s): complete", record.key, record.meta.name)

    def _on_moved(self, record, _alert):
        self._wake("move", record.key, None)

    def _on_move_failed(self, record, alert):
        self._wake("move", record.key, "%s: %s" % (alert.file_path, alert.message()))

    def _on_file_error(self, record, alert):
        # libtorrent stops writing but leaves the torrent's error code clear (seen with ENOSPC):
        # keep the reason so that status reports it instead of a download that never ends.
        record.file_error = alert.message()
        LOG.error("torrent %s: %s", record.key, alert.message())

    @staticmethod
    def _log_torrent_error(record, alert):
        LOG.error("torrent %s: %s", record.key, alert.message())

    @staticmethod
    def _log_torrent_warning(record, alert):
        LOG.warning("torrent %s: %s", record.key, alert.message())

    # ---- requests

    def handle_request(self, request):
        """Validate and run one request dict; return the response dict."""
        try:
            return self.ops[request_op(request)](request)
        except (VmicError, OSError, RuntimeError) as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            self._wake_run()

    @staticmethod
    def _log_crash(request, _exc):
        LOG.exception("request %r failed", request.get("op") if isinstance(request, dict) else None)

    def _get(self, key, op):
        with self.lock:
            record = self.torrents.get(key)
        if record is None:
            raise EngineError("%s: torrent %s is not in the engine" % (op, key))
        return record

    def op_ping(self, request):
        """Liveness and version."""
        check_fields(request, ())
        return {"ok": True, "engine": "libtorrent", "version": self.lt.__version__, "torrents": len(self._records())}

    def op_stats(self, request):
        """libtorrent's session counters (``lt.session_stats_metrics()`` names them): what the network thread did."""
        check_fields(request, ())
        waiter = self._expect("stats", "session")
        self.session.post_session_stats()
        return {"ok": True, "counters": self._wait(waiter, "stats", "session")}

    def op_add(self, request):
        """Add a torrent; idempotent for a torrent already present."""
        check_fields(request, ("torrent", "save_dir"), ("seed_mode",))
        encoded = request["torrent"]
        if not isinstance(encoded, str):
            raise EngineError("add: torrent is not a base64 string")
        if len(encoded) > MAX_BASE64_TORRENT:
            raise LimitError("add: torrent larger than %d bytes" % MAX_TORRENT_BYTES)
        try:
            data = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise EngineError("add: torrent is not valid base64")
        save_dir = request_dir(request, "save_dir")
        seed_mode = request_bool(request, "seed_mode")
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
            self.state.write_torrent(key, data)
            record = self._add_to_session(key, meta, meta.params, save_dir, state, seed_mode)
            if seed_mode:
                record.completed_at = record.added_at
            self._write_state(record, force=True)
            self._save_resume(record, force=True)
            if seed_mode:
                self._dial_for_a_while()
        except BaseException:
            with self.lock:
                self.torrents.pop(key, None)
            if record is not None:
                self.session.remove_torrent(record.handle)
            self.state.forget(key)
            raise
        LOG.info("torrent %s (%s): added into %s%s", key, meta.name, save_dir, " in seed mode" if seed_mode else "")
        return {"ok": True, "key": key, "added": True}

    def op_status(self, request):
        """Status of one or all torrents."""
        check_fields(request, (), ("key",))
        if "key" in request:
            key = request_key(request)
            with self.lock:
                records = [self.torrents[key]] if self.torrents.get(key) is not None else []
        else:
            records = self._records()
        return {"ok": True, "torrents": [self._status_dict(r) for r in records]}

    def _status_dict(self, record):
        lt = self.lt
        self._sample(record)     # counters as of this request, not of the last periodic sample
        status = record.handle.status()
        states = lt.torrent_status.states
        complete = status.is_seeding or status.is_finished
        file_error = record.file_error if not complete else None
        error = None
        if status.errc.value() != 0:
            error = status.errc.message()
            if status.error_file >= 0:
                error = "%s (file %d)" % (error, status.error_file)
        elif file_error:
            error = file_error
        state = accounting.torrent_state(error, status.state in (states.checking_files, states.checking_resume_data, states.queued_for_checking),
                                         bool(status.flags & lt.torrent_flags.paused), complete)
        has_last = False
        if status.num_pieces and not status.is_seeding:
            try:
                has_last = record.handle.have_piece(accounting.last_piece(record.meta.size, record.meta.piece_size))
            except RuntimeError:
                pass
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
            "total_done": accounting.verified_bytes(record.meta.size, record.meta.piece_size, int(status.num_pieces), has_last,
                                                    status.is_seeding),
            "upload_total": int(status.all_time_upload),
            "num_peers": int(status.num_peers),
            "num_seeds": int(status.num_seeds),
            "download_rate": int(status.download_payload_rate),
            "upload_rate": int(status.upload_payload_rate),
            "error": error,
            "added_at": record.added_at,
            "completed_at": accounting.completed_at(record.completed_at, state, time.time()),
        }
        result.update(counters)
        return dict((name, result[name]) for name in STATUS_FIELDS)

    def op_move(self, request):
        """move_storage into dest_dir on the same filesystem (a rename), and save resume data."""
        check_fields(request, ("key", "dest_dir"))
        key = request_key(request)
        dest = request_dir(request, "dest_dir")
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
        check_fields(request, ("key",), ("delete_files",))
        key = request_key(request)
        delete_files = request_bool(request, "delete_files")
        record = self._get(key, "remove")
        self.state.forget(key)
        kind = "delete" if delete_files else "remove"
        waiter = self._expect(kind, key)
        with self.lock:
            self.torrents.pop(key, None)
        if delete_files:
            self.session.remove_torrent(record.handle, self.lt.options_t.delete_files)
        else:
            self.session.remove_torrent(record.handle)
        failure = self._wait(waiter, kind, key)
        if failure is not None:
            raise EngineError("remove: torrent %s: removed, but its data was not deleted: %s" % (key, failure))
        LOG.info("torrent %s (%s): removed%s", key, record.meta.name, " with its data" if delete_files else "")
        return {"ok": True}


def _pipe():
    """A pipe whose ends never block (libtorrent's thread must not wait on a full pipe; run() must not wait on an empty one)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


def _drain(fd):
    """Read everything written to the pipe ``fd`` so far."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
