# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a torrent's bytes came from, how many are verified, and when it completed: pure functions.

libtorrent counts payload per connection (``peer_info.total_download``) and per torrent
(``torrent_status.total_payload_download``), not per kind of source.  The service samples the
connections about once a second and gives :func:`attribute` plain values: each connection as
``(ip, port, category, total_download)`` and the torrent's payload total.  :func:`attribute`
credits each connection's growth since the previous sample to its category; what connections
received between their last sample and their disconnection is the torrent total minus everything
credited so far, and goes to the category of the last connection that closed in the interval.
Nothing here touches libtorrent, so the rules are tested with plain values (docs/engine.md).
"""

from __future__ import annotations

WEB = "web"       # a web seed (BEP 19) or HTTP seed (BEP 17) connection
SEED = "seed"     # a BitTorrent peer that had every piece when sampled
PEER = "peer"     # any other BitTorrent peer

FROM_PEERS = "bytes_from_peers"         # every BitTorrent peer, seeds included
FROM_SEEDS = "bytes_from_seeds"         # the part of FROM_PEERS that came from seeds
FROM_WEB_SEED = "bytes_from_web_seed"
BYTE_COUNTERS = (FROM_PEERS, FROM_SEEDS, FROM_WEB_SEED)


def peer_category(is_web_seed, is_seed):
    """The category of one connection: WEB, SEED or PEER."""
    if is_web_seed:
        return WEB
    return SEED if is_seed else PEER


def credit(counters, category, amount):
    """``counters`` (a dict) with ``amount`` bytes credited to ``category``; a new dict, the input is unchanged."""
    result = dict(counters)
    if amount <= 0:
        return result
    if category == WEB:
        result[FROM_WEB_SEED] = result.get(FROM_WEB_SEED, 0) + amount
    else:
        result[FROM_PEERS] = result.get(FROM_PEERS, 0) + amount
        if category == SEED:
            result[FROM_SEEDS] = result.get(FROM_SEEDS, 0) + amount
    return result


def attribute(counters, attributed, last_totals, connections, payload_total, disconnected):
    """Credit the bytes received since the previous sample; return ``(counters, attributed, totals)``.

    ``counters``: the torrent's counters (dict; other keys pass through); ``attributed``: bytes of
    this session credited so far; ``last_totals``: ``{(ip, port, is_web): (total_download, category)}``
    of the previous sample; ``connections``: ``(ip, port, category, total_download)`` now;
    ``payload_total``: the torrent's payload bytes of this session; ``disconnected``: categories of the
    connections closed since the previous sample, oldest first.  Returns new values; nothing is modified.
    """
    totals = {}
    for ip, port, category, total in connections:
        ident = (ip, port, category == WEB)
        last = last_totals.get(ident, (0, category))[0]
        if total < last:
            last = 0            # a new connection from the same endpoint
        if total > last:
            counters = credit(counters, category, total - last)
            attributed += total - last
        totals[ident] = (total, category)
    residual = payload_total - attributed
    if residual > 0 and disconnected:
        counters = credit(counters, disconnected[-1], residual)
        attributed += residual
    return dict(counters), attributed, totals


def disconnected_category(last_totals, ip, port):
    """The category of the closed connection to ``(ip, port)``: as last sampled, PEER if it never was."""
    for ident, (_total, category) in last_totals.items():
        if (ident[0], ident[1]) == (ip, port):
            return category
    return PEER


def last_piece(size, piece_size):
    """Index of the last piece of a single-file torrent of ``size`` bytes."""
    return (size - 1) // piece_size


def verified_bytes(size, piece_size, num_pieces, has_last_piece, seeding):
    """Bytes of the pieces that passed the hash check.

    libtorrent's ``total_done`` also counts blocks of pieces not yet checked; this counts
    ``num_pieces`` whole pieces, the last one (shorter) at its real size when it is among them.
    """
    if seeding:
        return size
    done = num_pieces * piece_size
    if num_pieces and has_last_piece:
        done -= piece_size - (size - last_piece(size, piece_size) * piece_size)
    return max(0, min(done, size))


def torrent_state(error, checking, paused, complete):
    """The status ``state``: error, checking, paused, seeding or downloading, in that order of precedence."""
    if error:
        return "error"
    if checking:
        return "checking"
    if paused:
        return "paused"
    return "seeding" if complete else "downloading"


def completed_at(recorded, state, now):
    """The completion time to report: the recorded one, or ``now`` for a torrent seen seeding before it was recorded.

    The service records completion on its tick; a status asked in between already says seeding
    and must not say ``completed_at: null``.
    """
    if recorded is not None or state != "seeding":
        return recorded
    return now
