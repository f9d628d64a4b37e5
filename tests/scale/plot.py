"""`make scale`: hosts completed over time during the one-change rollout, from the hosts' own clocks, and its PNG.

Per host, relative to the rollout's start (the controller's clock when ``rollout.yml`` started; every light host runs
on the same machine, so the same clock):

- **downloaded**: the engine's completion time (``completed_at`` of its status, libtorrent's finished alert) of the
  torrents it took during the rollout (``added_at`` at or after the start), the last of them;
- **activated**: when its new image entered the store's final directory (``<store>/<identifier>/<version>/<file>``,
  not ``.partial``): the file's ctime, which the rename of the activation sets (image_sync phase=activate).

``write_png`` needs matplotlib (Agg backend; tests/scale/requirements.txt, installed by ``make scale``); the rest is
plain Python. The collection must be importable (``testfleet.collection.ensure_collection_path``).
"""

from __future__ import annotations

import os
import struct

from ansible_collections.vmic.fleet.plugins.module_utils.engine import LibtorrentEngineClient
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import PARTIAL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rollout_torrents(torrents, started):
    """The torrents of an engine's status list that it took at or after ``started`` (seconds since the epoch)."""
    return [t for t in torrents or [] if isinstance(t, dict) and _number(t.get("added_at")) and t["added_at"] >= started]


def downloaded_at(torrents):
    """When the engine held every byte of every one of ``torrents``: the last ``completed_at``; None when one is not complete
    (or there is none)."""
    times = [t.get("completed_at") for t in torrents]
    if not times or not all(_number(value) for value in times):
        return None
    return max(times)


def activated_at(torrents, machine_path):
    """When the files of ``torrents`` were all in the store's final directories: the last ctime; None when one is still
    in ``.partial`` or missing. ``machine_path(host_path)`` maps a path of the host to where the machine sees it."""
    times = []
    for torrent in torrents:
        save_dir, name = torrent.get("save_dir"), torrent.get("name")
        if not save_dir or not name or PARTIAL in save_dir.split("/"):
            return None
        try:
            times.append(os.stat(machine_path(os.path.join(save_dir, name))).st_ctime)
        except OSError:
            return None
    return max(times) if times else None


def host_times(started, torrents, machine_path):
    """{downloaded, activated}: seconds since ``started`` (None: not reached) of one host; ``torrents`` is its engine's
    status list; None when the engine took nothing during the rollout."""
    mine = rollout_torrents(torrents, started)
    if not mine:
        return None
    out = {}
    for label, value in (("downloaded", downloaded_at(mine)), ("activated", activated_at(mine, machine_path))):
        out[label] = round(value - started, 2) if value is not None else None
    return out


def completed_curve(times, label):
    """Points (seconds, hosts completed by then) of a step curve over ``times`` (host -> {label: seconds or None})."""
    seconds = sorted(t[label] for t in times.values() if t and t.get(label) is not None)
    points = [(0.0, 0)]
    for count, second in enumerate(seconds, 1):
        points.append((second, count))
    return points


def machine_size(meminfo="/proc/meminfo"):
    """'N cores, M GB' of this machine (memory: MemTotal, rounded to GiB)."""
    kib = 0
    with open(meminfo, encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
    return "%d cores, %d GB" % (os.cpu_count() or 1, round(kib / 1048576.0))


def png_size(path):
    """(width, height) of the PNG at ``path``; ValueError when it is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError("%s: not a PNG file" % path)
    return struct.unpack(">II", head[16:24])


def write_png(path, times, hosts, title, end=None):
    """Write the plot: hosts downloaded and hosts activated against seconds since the rollout started, the rollout's
    end (``end`` seconds) as a vertical line; returns (width, height) of the PNG written."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel

    figure, axes = pyplot.subplots(figsize=(9, 5), dpi=100)
    try:
        for label, text in (("downloaded", "downloaded (engine: every byte)"), ("activated", "activated (image in the store)")):
            points = completed_curve(times, label)
            count = len(points) - 1
            if end is not None and end > points[-1][0]:
                points.append((end, points[-1][1]))     # the count holds until the rollout ends
            axes.step([p[0] for p in points], [p[1] for p in points], where="post", label="%s: %d" % (text, count))
        if end is not None:
            axes.axvline(end, color="grey", linestyle="--", label="rollout.yml ended (%.1f s)" % end)
        axes.set_xlabel("seconds since rollout.yml started")
        axes.set_ylabel("hosts completed")
        axes.axhline(hosts, color="black", linewidth=0.6)
        axes.set_ylim(0, hosts * 1.05 + 0.5)
        axes.set_xlim(left=0)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower right")
        axes.set_title(title)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
    return png_size(path)


def fleet_times(started, hosts, timeout=30):
    """host -> :func:`host_times` of every host, read from its engine now; ``hosts``: (name, the engine's socket as the
    machine sees it, machine_path). A host whose engine does not answer gets {"error": why}."""
    out = {}
    for name, socket_path, machine_path in hosts:
        try:
            torrents = LibtorrentEngineClient(socket_path, timeout=timeout).status()
        except (EngineError, OSError) as exc:
            out[name] = {"error": str(exc)}
            continue
        out[name] = host_times(started, torrents, machine_path)
    return out
