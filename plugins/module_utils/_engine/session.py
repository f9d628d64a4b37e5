# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's libtorrent session: its settings, its peer classes and the flags of an added torrent.

docs/engine.md gives the reason of each setting.  ``lt`` is the module ``libtorrent_dep`` returned.
"""

from __future__ import annotations


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
        "choking_algorithm": int(lt.choking_algorithm_t.fixed_slots_choker),
        "seed_choking_algorithm": int(lt.seed_choking_algorithm_t.round_robin),
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
        # a complete torrent only answers, or seeds redial seeds forever (docs/engine.md, "An all-seed swarm");
        # the service lets them dial for seed_dial_seconds after a start with torrents or a seed-mode add
        "seeding_outgoing_connections": False,
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


def torrent_flags(lt, current, seed_mode, config):
    """The add_torrent_params flags of a torrent this engine adds: ``current`` (from resume data or the defaults)
    without auto-management, pause and duplicate errors, with seed mode, super-seeding and PEX as asked."""
    flags = lt.torrent_flags
    result = current & ~flags.auto_managed & ~flags.paused & ~flags.duplicate_is_error
    result &= ~flags.seed_mode & ~flags.super_seeding & ~flags.disable_pex
    if seed_mode:
        result |= flags.seed_mode
    if config["super_seeding"]:
        result |= flags.super_seeding
    if not config["pex"]:
        result |= flags.disable_pex
    return result
