#!/usr/bin/env python
"""What an idle engine service costs: memory and CPU of N engines that seed and do nothing else.

Starts ``--engines`` (10) engine services on 127.0.0.x, each seeding the same image in seed mode
(``--torrents`` images each, default 1), waits ``--settle`` seconds, then measures every engine over
``--seconds`` (60) of idling: RSS and private memory (``/proc/PID/smaps_rollup``) before and after,
and CPU time (``/proc/PID/task/*/schedstat``, in nanoseconds) as a percentage of one core.  At the end it times one
request to each engine (how quickly an idle engine answers).  The last line is machine-readable::

    engine_idle: engines=10 seconds=60 libtorrent=2.0.8.0 rss_mb=... private_mb=... cpu_pct=... load=... cpus=2

``--python /usr/bin/python3`` runs the engines on Debian's python3-libtorrent (the fleet's), the
default is this interpreter.  Figures, not pass/fail: ``make bench`` does not run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "engines"))

from testfleet.collection import ensure_collection_path  # noqa: E402  pylint: disable=wrong-import-position

ensure_collection_path()

from daemons import EngineProcess  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent  # noqa: E402  pylint: disable=wrong-import-position

MIB = 1024 * 1024


def memory(pid):
    """(rss, private) bytes of process ``pid``."""
    values = {}
    with open("/proc/%d/smaps_rollup" % pid) as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                values[parts[0][:-1]] = int(parts[1]) * 1024
    return values.get("Rss", 0), values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)


def cpu_seconds(pid):
    """CPU seconds of the threads of process ``pid`` alive now (schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue        # a thread that ended in between
    return total / 1e9


def threads(pid):
    """Number of threads of process ``pid``."""
    return len(os.listdir("/proc/%d/task" % pid))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--engines", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between the last add and the first measurement")
    parser.add_argument("--torrents", type=int, default=1, help="images each engine seeds")
    parser.add_argument("--python", default=None, help="interpreter of the engines (default: this one)")
    parser.add_argument("--dht", action="store_true", help="DHT on (without bootstrap nodes), as in production")
    parser.add_argument("--size-mib", type=int, default=8)
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="vmic-idle-")
    engines = []
    try:
        origin = os.path.join(work, "origin")
        os.makedirs(origin)
        metas = []
        for index in range(args.torrents):
            path = os.path.join(origin, "image%d.img" % index)
            with open(path, "wb") as handle:
                handle.write(os.urandom(args.size_mib * MIB))
            metas.append(make_torrent(path, piece_size=MIB))
        for index in range(args.engines):
            engine = EngineProcess(work, "engine%d" % index, "127.0.1.%d" % (index + 1), python=args.python, dht=args.dht)
            engines.append(engine)
            engine.start()
            for meta in metas:
                engine.client.add(meta.data, origin, seed_mode=True)
        version = engines[0].client.ping()["version"]
        time.sleep(args.settle)
        before = [(memory(e.proc.pid), cpu_seconds(e.proc.pid)) for e in engines]
        started = time.monotonic()
        time.sleep(args.seconds)
        wall = time.monotonic() - started
        after = [(memory(e.proc.pid), cpu_seconds(e.proc.pid)) for e in engines]
        load = os.getloadavg()
        answers = []
        for engine in engines:
            asked = time.monotonic()
            assert engine.client.status()[0]["state"] == "seeding"
            answers.append(time.monotonic() - asked)

        print("engine  rss_mb(before->after)  private_mb(before->after)  cpu_%%_of_a_core  threads  answer_ms")
        for index, engine in enumerate(engines):
            (rss0, priv0), cpu0 = before[index]
            (rss1, priv1), cpu1 = after[index]
            print("%-7d %6.1f -> %6.1f        %6.1f -> %6.1f            %6.3f          %3d      %6.1f"
                  % (index, rss0 / MIB, rss1 / MIB, priv0 / MIB, priv1 / MIB, 100.0 * (cpu1 - cpu0) / wall, threads(engine.proc.pid),
                     1000 * answers[index]))
        count = len(engines)
        rss = sum(m[0][0] for m in after) / count / MIB
        private = sum(m[0][1] for m in after) / count / MIB
        cpu = sum(after[i][1] - before[i][1] for i in range(count)) / count / wall * 100.0
        print("mean per engine: rss %.1f MiB, private %.1f MiB, cpu %.3f %% of a core over %.0f s; load average %.2f %.2f %.2f on %d cpus"
              % (rss, private, cpu, wall, load[0], load[1], load[2], os.cpu_count()))
        print("engine_idle: engines=%d seconds=%.0f libtorrent=%s rss_mb=%.1f private_mb=%.1f cpu_pct=%.3f load=%.2f cpus=%d"
              % (count, wall, version, rss, private, cpu, load[0], os.cpu_count()))
    finally:
        for engine in engines:
            engine.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
