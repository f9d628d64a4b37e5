#!/usr/bin/env python
"""What complete seeds cost in a swarm where everyone is a complete seed: CPU and libtorrent counters per phase.

Starts a closed opentracker on 127.0.0.1, one repository seed (127.0.1.1, seed mode) and ``--engines`` (40)
engine services on 127.0.1.2, 127.0.1.3, ... (one address each: libtorrent allows one connection per
IP), all with DHT (bootstrapped from the seed) and PEX, as in production.  Every engine downloads
``--torrents`` (3) images of ``--size-mib`` (8) MiB; then the swarm holds only complete seeds.  Measured
per phase: ``download`` (add to the last completion), ``settle`` (``--settle`` [60] s after it) and
``steady`` (the ``--steady`` [120] s after that): each engine's CPU (utime + stime of ``/proc/PID/stat``, split
into the Python main thread and the others: libtorrent's, and short request threads) as a percentage of one core, libtorrent's session
counters (the engine's ``stats`` request) that explain it, and the machine's load average.  At the end
a late leecher (``--no-leecher`` skips it) joins and the time it takes to download every image from the
seeds is printed: seeds must stay cheap without becoming unreachable.  The last line is machine-readable::

    swarm_seeding: engines=40 torrents=3 libtorrent=2.0.8.0 download_s=... settle_cpu_pct=... steady_cpu_pct=... leecher_s=... load=...

``--python /usr/bin/python3`` runs the engines on Debian's python3-libtorrent (the fleet's).  Figures,
not pass/fail: ``make bench`` does not run it.  Keep ``--engines`` at 40 or less on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine_idle import MIB, memory  # noqa: E402  pylint: disable=wrong-import-position
from daemons import EngineProcess  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.tracker import LOOPBACK, Tracker  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.waiting import free_port, machine_jiffies  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent  # noqa: E402  pylint: disable=wrong-import-position

# (column, counter) printed per phase, as the mean increase per engine (gauges: the value at the end of the phase)
COUNTERS = (
    ("attempts", "peer.connection_attempts"),
    ("boost", "peer.boost_connection_attempts"),
    ("incoming", "peer.incoming_connections"),
    ("disconn", "peer.disconnected_peers"),
    ("eof", "peer.eof_peers"),
    ("refused", "peer.connrefused_peers"),
    ("timeout", "peer.connect_timeouts"),
    ("uninterest", "peer.uninteresting_peers"),
    ("bitfield_in", "ses.num_incoming_bitfield"),
    ("have_all_in", "ses.num_incoming_have_all"),
    ("pex_in", "ses.num_incoming_pex"),
    ("dht_in", "dht.dht_messages_in"),
    ("tracker_kb", "net.recv_tracker_bytes"),
    ("ticks", "net.on_tick_counter"),
    ("reads", "net.on_read_counter"),
    ("accepts", "net.on_accept_counter"),
)
GAUGES = (("connected", "peer.num_peers_connected"), ("half_open", "peer.num_peers_half_open"))


TICKS = os.sysconf("SC_CLK_TCK")


def stat_seconds(path):
    """utime + stime of a /proc ``stat`` file, in seconds (a process's includes the threads that ended)."""
    with open(path) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(TICKS)


def thread_split(pid):
    """(main thread, other threads) CPU seconds of ``pid``: the Python loop and libtorrent's threads."""
    main = stat_seconds("/proc/%d/task/%d/stat" % (pid, pid))
    return main, stat_seconds("/proc/%d/stat" % pid) - main


def sample(engines):
    """One sample: time, machine jiffies, load and per engine (main cpu, other cpu, counters)."""
    return {"time": time.monotonic(), "machine": machine_jiffies(), "load": os.getloadavg(),
            "engines": [(thread_split(e.proc.pid), e.client.request("stats")["counters"]) for e in engines]}


def report(name, first, last):
    """Print the phase between samples ``first`` and ``last``; return its mean CPU % of a core per engine."""
    wall = last["time"] - first["time"]
    count = len(first["engines"])
    cpus = []
    for index in range(count):
        (main0, other0), _counters0 = first["engines"][index]
        (main1, other1), _counters1 = last["engines"][index]
        cpus.append((100.0 * (main1 - main0) / wall, 100.0 * (other1 - other0) / wall))
    totals = sorted(m + o for m, o in cpus)
    mean = sum(totals) / count
    busy = 100.0 * (last["machine"][0] - first["machine"][0]) / max(1, last["machine"][1] - first["machine"][1])
    print("\n== %s: %.0f s, %d engines" % (name, wall, count))
    python_share = sum(pair[0] for pair in cpus) / count
    libtorrent_share = sum(pair[1] for pair in cpus) / count
    print("cpu %% of a core per engine: mean %.3f (python %.3f, libtorrent %.3f), min %.3f, median %.3f, max %.3f"
          % (mean, python_share, libtorrent_share, totals[0], totals[count // 2], totals[-1]))
    print("machine: cpu %.0f %% busy (all cores), load average at the end %.2f %.2f %.2f" % ((busy,) + tuple(last["load"])))
    rates = []
    for column, counter in COUNTERS:
        delta = sum(last["engines"][i][1].get(counter, 0) - first["engines"][i][1].get(counter, 0) for i in range(count)) / count
        if counter == "net.recv_tracker_bytes":
            delta /= 1024.0
        rates.append("%s %.1f (%.2f/s)" % (column, delta, delta / wall))
    for column, counter in GAUGES:
        rates.append("%s %.1f" % (column, sum(last["engines"][i][1].get(counter, 0) for i in range(count)) / count))
    print("counters, mean per engine over the phase: " + ", ".join(rates))
    return mean


def wait_complete(engines, keys, timeout):
    """Wait until every engine seeds every key; return the seconds it took."""
    started = time.monotonic()
    pending = list(engines)
    while pending:
        if time.monotonic() - started > timeout:
            raise SystemExit("%d engines not complete after %d s" % (len(pending), timeout))
        time.sleep(0.5)
        pending = [e for e in pending if {t["key"] for t in e.client.status() if t["state"] == "seeding"} != keys]
    return time.monotonic() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--engines", type=int, default=40)
    parser.add_argument("--torrents", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=8)
    parser.add_argument("--settle", type=float, default=60.0, help="seconds of the phase after the last completion")
    parser.add_argument("--steady", type=float, default=120.0, help="seconds of the phase after the settling one")
    parser.add_argument("--python", default=None, help="interpreter of the engines (default: this one)")
    parser.add_argument("--no-leecher", action="store_true", help="no late leecher at the end")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (engine logs)")
    args = parser.parse_args(argv)
    if args.engines > 250:
        parser.error("--engines: at most 250 (127.0.1.2 to 127.0.1.251)")

    work = tempfile.mkdtemp(prefix="vmic-seeding-")
    engines = []
    tracker = None
    extra = []
    try:
        origin = os.path.join(work, "origin")
        os.makedirs(origin)
        tracker = Tracker(None, os.path.join(work, "tracker"), free_port(LOOPBACK))
        metas = []
        for index in range(args.torrents):
            path = os.path.join(origin, "image%d.img" % index)
            with open(path, "wb") as handle:
                handle.write(os.urandom(args.size_mib * MIB))
            metas.append(make_torrent(path, piece_size=MIB, trackers=[tracker.announce_url]))
        tracker.start([h for m in metas for h in (m.info_hash_v1, m.info_hash_v2)])
        keys = {m.info_hash_v1 for m in metas}

        seed = EngineProcess(work, "seed", "127.0.1.1", python=args.python, dht=True)
        extra.append(seed)
        seed.start()
        for meta in metas:
            seed.client.add(meta.data, origin, seed_mode=True)
        bootstrap = [seed_endpoint(seed)]
        for index in range(args.engines):
            engine = EngineProcess(work, "engine%d" % index, "127.0.1.%d" % (index + 2), python=args.python, dht=True,
                                   dht_bootstrap_nodes=bootstrap)
            engines.append(engine)
            engine.start()
        version = seed.client.ping()["version"]
        print("libtorrent %s, %d engines + 1 seed, %d torrents of %d MiB, tracker %s, DHT bootstrap %s"
              % (version, args.engines, args.torrents, args.size_mib, tracker.announce_url, bootstrap[0]))

        first = sample(engines)
        for engine in engines:
            os.makedirs(os.path.join(engine.dir, "images"))
            for meta in metas:
                engine.client.add(meta.data, os.path.join(engine.dir, "images"))
        download = wait_complete(engines, keys, 600)
        complete = sample(engines)
        time.sleep(args.settle)
        settled = sample(engines)
        time.sleep(args.steady)
        steady = sample(engines)

        report("download", first, complete)
        settle_cpu = report("settle (0-%.0f s after the last completion)" % args.settle, complete, settled)
        steady_cpu = report("steady (%.0f-%.0f s after)" % (args.settle, args.settle + args.steady), settled, steady)
        private = sum(memory(e.proc.pid)[1] for e in engines) / len(engines) / MIB
        print("memory: %.1f MiB private per engine" % private)
        leecher_s = -1.0
        if not args.no_leecher:
            leecher = EngineProcess(work, "leecher", "127.0.1.%d" % (args.engines + 2), python=args.python, dht=True,
                                    dht_bootstrap_nodes=bootstrap)
            extra.append(leecher)
            leecher.start()
            os.makedirs(os.path.join(leecher.dir, "images"))
            for meta in metas:
                leecher.client.add(meta.data, os.path.join(leecher.dir, "images"))
            leecher_s = wait_complete([leecher], keys, 300)
            print("\nlate leecher: every image in %.1f s" % leecher_s)
        load = os.getloadavg()
        figures = (args.engines, args.torrents, version, download, settle_cpu, steady_cpu, leecher_s, load[0], os.cpu_count())
        print("\nswarm_seeding: engines=%d torrents=%d libtorrent=%s download_s=%.1f settle_cpu_pct=%.3f steady_cpu_pct=%.3f "
              "leecher_s=%.1f load=%.2f cpus=%d" % figures)
    finally:
        for engine in engines + extra:
            engine.cleanup()
        if tracker is not None:
            tracker.stop()
        if args.keep:
            print("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def seed_endpoint(engine):
    """The "ip:port" the engine listens on (TCP and, with DHT, UDP)."""
    with open(engine.config_path) as handle:
        return json.load(handle)["listen_interfaces"][0]


if __name__ == "__main__":
    sys.exit(main())
