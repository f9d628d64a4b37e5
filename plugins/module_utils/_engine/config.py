# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's configuration: a JSON object (at most 64 KiB); unknown keys are refused.

Keys and defaults:

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
- ``seed_dial_seconds`` [30]: complete torrents accept connections but dial none, except for this
  many seconds after the engine starts with torrents and after a seed-mode ``add``, so that a new or restarted
  seed reaches the downloaders waiting for it; 0 = never.  See ``docs/engine.md``.
- ``rotate_interval`` [15]: seconds between checks that replace one useless peer of a downloading
  torrent that is at its ``max_download_peers`` limit.
- ``request_timeout`` [10], ``piece_timeout`` [10], ``peer_connect_timeout`` [3],
  ``inactivity_timeout`` [120]: seconds; tuned for a data centre, where a peer that does not answer
  within seconds is overloaded or gone.
- ``log_level`` ["INFO"].
"""

from __future__ import annotations

import json
import os
import re

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError

MAX_CONFIG_BYTES = 64 * 1024
MAX_SOCKET_PATH_BYTES = 100     # sun_path holds 108 bytes; leave room for the terminating NUL and a margin

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
    "seed_dial_seconds": 30,
    "request_timeout": 10,
    "piece_timeout": 10,
    "peer_connect_timeout": 3,
    "inactivity_timeout": 120,
    "log_level": "INFO",
}

_PATHS = ("socket", "state_dir")
_BOOLEANS = ("dht", "pex", "super_seeding")
_ENDPOINT_LISTS = ("listen_interfaces", "dht_bootstrap_nodes")
_INTEGERS = ("max_download_peers", "max_upload_slots", "connections_limit", "upload_rate_limit", "download_rate_limit",
             "resume_interval", "resume_piece_burst", "rotate_interval", "seed_dial_seconds", "request_timeout", "piece_timeout",
             "peer_connect_timeout", "inactivity_timeout")
_AT_LEAST_ONE = ("max_upload_slots", "connections_limit", "resume_interval", "rotate_interval", "request_timeout",
                 "piece_timeout", "peer_connect_timeout", "inactivity_timeout", "resume_piece_burst")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MAX_INT = 2 ** 31 - 1          # libtorrent's settings are 32-bit signed integers
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


def _check_type(config, key, kinds, what):
    value = config[key]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
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
    for key in _PATHS + ("log_level",):
        _check_type(config, key, (str,), what)
    for key in _PATHS:
        if not os.path.isabs(config[key]):
            raise EngineError("%s: %s %r is not an absolute path" % (what, key, config[key]))
    if len(config["socket"].encode("utf-8")) > MAX_SOCKET_PATH_BYTES:
        raise EngineError("%s: socket path longer than %d bytes" % (what, MAX_SOCKET_PATH_BYTES))
    for key in _BOOLEANS:
        _check_type(config, key, (bool,), what)
    for key in _ENDPOINT_LISTS:
        for value in _check_type(config, key, (list,), what):
            if not isinstance(value, str) or not _ENDPOINT.match(value):
                raise EngineError("%s: %s entry %r is not host:port" % (what, key, value))
    if not config["listen_interfaces"]:
        raise EngineError("%s: listen_interfaces is empty" % what)
    for key in _INTEGERS:
        value = _check_type(config, key, (int,), what)
        if value < 0 or value > _MAX_INT:
            raise EngineError("%s: %s %d is out of range" % (what, key, value))
    for key in _AT_LEAST_ONE:
        if config[key] < 1:
            raise EngineError("%s: %s must be at least 1" % (what, key))
    if config["log_level"].upper() not in _LOG_LEVELS:
        raise EngineError("%s: log_level %r is not %s or %s" % (what, config["log_level"], ", ".join(_LOG_LEVELS[:-1]), _LOG_LEVELS[-1]))
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
