#!/usr/bin/env python
"""Benchmark of the vmic.fleet data plane against the line-rate bound and two baselines.

One run builds a fleet of network namespaces (``tests/testfleet``): a repository host (engine
seeding in seed mode + HTTP web seed), an opentracker host and N hypervisor hosts, every link
shaped with tbf to ``--rate-mbit`` both ways (the repository's to ``--seed-rate-mbit``).  Then, over
the same links, one after the other:

1. **bittorrent**: every engine is given the torrent at once; per-node completion times;
2. **central**: every node fetches the image from the repository's HTTP server at once;
3. **wave**: a binary-tree copy wave over HTTP: in each round every holder (the repository first)
   copies the image to one new host, so the holders double per round.

The bound for a swarm (Kumar & Ross) with seed upload u_s, node rates u_i/d_i and file size F::

    T_min = max(F / u_s, F / min(d_i), N * F / (u_s + sum(u_i)))

Printed: a table of p50 / p90 / max completion per method with the ratio to T_min, the seed's
egress (engine upload + web-seed bytes) in units of F, and as the last line, machine-readable::

    bench: nodes=N size=BYTES t_p50=S t_max=S t_min=S ratio=R seed_egress=X wave=S central=S

Needs root, iproute2, opentracker, libtorrent.  Not a test: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from testfleet.swarm import HTTP_PORT, HTTPD, Swarm, ensure_collection_path  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.waiting import machine_jiffies  # noqa: E402  pylint: disable=wrong-import-position

ensure_collection_path()


def percentile(values, pct):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(round(pct / 100.0 * len(ordered) + 0.4999)))
    return ordered[min(rank, len(ordered)) - 1]


def line_rate_bytes(mbit):
    """Link rate in bytes/s."""
    return mbit * 1e6 / 8.0


def t_min(size, nodes, rate_mbit, seed_rate_mbit):
    """Line-rate lower bound for a swarm of ``nodes`` equal peers and one seed."""
    u_s = line_rate_bytes(seed_rate_mbit)
    u_i = line_rate_bytes(rate_mbit)
    return max(size / u_s, size / u_i, nodes * size / (u_s + nodes * u_i))


def run_bittorrent(swarm, meta, deadline):
    """Give every engine the torrent at once; return ({node: seconds}, seed upload, web seed bytes,
    statuses, machine CPU busy fraction during the phase)."""
    swarm.seed(meta)
    swarm.start_peers()
    cpu0 = machine_jiffies()
    t0 = time.time()
    key = swarm.add_everywhere(meta)
    done = {}
    end = time.monotonic() + deadline
    while len(done) < len(swarm.peers):
        for node in swarm.peers:
            if node.name in done:
                continue
            st = node.one(key)
            if st and st["state"] == "seeding":
                finished = st.get("completed_at") or time.time()
                done[node.name] = min(finished, time.time()) - t0
            elif st and st.get("error"):
                raise RuntimeError("node %s: %s" % (node.name, st["error"]))
        if time.monotonic() > end:
            raise RuntimeError("bittorrent phase: %d of %d nodes done after %ss" % (len(done), len(swarm.peers), deadline))
        time.sleep(0.25)
    cpu1 = machine_jiffies()
    busy = (cpu1[0] - cpu0[0]) / float(max(1, cpu1[1] - cpu0[1]))
    time.sleep(1.5)  # let the engines' byte counters take their last sample
    seed_up = swarm.seed_node.one(key)["upload_total"]
    web = swarm.web_seed_stats()["bytes_served"]
    statuses = swarm.statuses(key)
    return done, seed_up, web, statuses, busy


def _fetch_all(swarm, pairs, dest_name, deadline):
    """Start one HTTP fetch per (receiver node, source url) at once; return {node: seconds from its start}."""
    procs = []
    results = {}
    for node, url in pairs:
        dest = os.path.join(node.dir, "http", dest_name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        result_file = os.path.join(node.dir, "http", "result.json")
        if os.path.exists(result_file):
            os.unlink(result_file)
        proc = node.host.popen([sys.executable, HTTPD, "fetch", url, dest, "--result-file", result_file,
                                "--timeout", str(deadline)], stdout=subprocess.DEVNULL)
        procs.append((node, proc, result_file))
    for node, proc, result_file in procs:
        proc.wait(deadline)
        with open(result_file, "r", encoding="utf-8") as handle:
            result = json.load(handle)
        if result["error"]:
            raise RuntimeError("HTTP fetch on %s: %s" % (node.name, result["error"]))
        results[node.name] = result
    return results


def _start_http_servers(swarm, nodes):
    servers = []
    for node in nodes:
        root = os.path.join(node.dir, "http")
        os.makedirs(root, exist_ok=True)
        stats = os.path.join(node.dir, "http-stats.json")
        proc = node.host.popen([sys.executable, HTTPD, "serve", "--root", root, "--bind", node.host.addr,
                                "--port", str(HTTP_PORT), "--stats-file", stats], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        servers.append((proc, stats))
    for proc, stats in servers:
        end = time.monotonic() + 10
        while not os.path.exists(stats):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("HTTP server did not start (%s)" % stats)
            time.sleep(0.05)
    return [server[0] for server in servers]


def _clear_http(swarm):
    for node in swarm.peers:
        shutil.rmtree(os.path.join(node.dir, "http"), ignore_errors=True)


def run_central(swarm, name, deadline):
    """Every node GETs the image from the repository at once; {node: seconds}."""
    _clear_http(swarm)
    url = swarm.web_seed_url_base + name
    t0 = time.time()
    results = _fetch_all(swarm, [(node, url) for node in swarm.peers], name, deadline)
    return {n: r["finished"] - t0 for n, r in results.items()}


def run_wave(swarm, name, deadline):
    """Binary-tree copy wave over HTTP; returns ({node: seconds}, rounds)."""
    _clear_http(swarm)
    servers = _start_http_servers(swarm, swarm.peers)
    try:
        holders = [swarm.web_seed_url_base + name]
        waiting = list(swarm.peers)
        done = {}
        rounds = 0
        t0 = time.time()
        while waiting:
            batch = list(zip(waiting[:len(holders)], holders))
            waiting = waiting[len(holders):]
            results = _fetch_all(swarm, batch, name, deadline)
            rounds += 1
            for node, _url in batch:
                done[node.name] = results[node.name]["finished"] - t0
                holders.append("http://%s:%d/%s" % (node.host.addr, HTTP_PORT, name))
        return done, rounds
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            proc.wait(10)


def summarize(times):
    """p50, p90, max of a {node: seconds} dict."""
    values = list(times.values())
    return percentile(values, 50), percentile(values, 90), max(values)


def bench_once(args, workdir):
    """One complete run; returns a dict of results."""
    size = int(args.size_mib * 1024 * 1024)
    seed_rate = args.seed_rate_mbit or args.rate_mbit
    engine_config = json.loads(args.engine_config) if args.engine_config else None
    swarm = Swarm(workdir, peers=args.nodes, rate_mbit=args.rate_mbit, seed_rate_mbit=seed_rate,
                  engine=args.engine, engine_config=engine_config,
                  seed_config=json.loads(args.seed_config) if args.seed_config else None)
    with swarm:
        name = "bench-image.raw"
        image = swarm.make_image(name, size)
        meta = swarm.make_torrent(image, piece_size=args.piece_kib * 1024)
        bound = t_min(size, args.nodes, args.rate_mbit, seed_rate)
        print("fleet: %d nodes, image %d bytes (%d pieces of %d KiB), links %g Mbit/s, seed %g Mbit/s, engine %s"
              % (args.nodes, size, (size + meta.piece_size - 1) // meta.piece_size, args.piece_kib,
                 args.rate_mbit, seed_rate, args.engine), flush=True)
        bt, seed_up, web, statuses, busy = run_bittorrent(swarm, meta, args.deadline)
        for node in [swarm.seed_node] + swarm.peers:
            node.stop()
        uploads = sorted(st["upload_total"] for st in statuses.values() if st)
        result = {"nodes": args.nodes, "size": size, "t_min": bound, "bt": bt, "seed_up": seed_up, "web": web,
                  "cpu_busy": busy,
                  "peer_upload_min": uploads[0], "peer_upload_max": uploads[-1],
                  "peer_upload_zero": sum(1 for u in uploads if u < meta.piece_size)}
        if args.baselines:
            # the same links, the same files, now without BitTorrent
            os.makedirs(swarm.repo_dir, exist_ok=True)
            result["central"] = run_central(swarm, name, args.deadline * 20)
            result["wave"], result["wave_rounds"] = run_wave(swarm, name, args.deadline * 5)
        return result


def report(result):
    """Print the table and the machine-readable line."""
    size = result["size"]
    bound = result["t_min"]
    rows = [("bittorrent", result["bt"])]
    if "central" in result:
        rows += [("central", result["central"]), ("wave", result["wave"])]
    print("%-11s %8s %8s %8s %8s" % ("method", "p50 s", "p90 s", "max s", "max/Tmin"))
    for label, times in rows:
        p50, p90, top = summarize(times)
        print("%-11s %8.1f %8.1f %8.1f %8.2f" % (label, p50, p90, top, top / bound))
    print("machine CPU busy during the bittorrent phase: %.0f%% of %d cores" % (100 * result["cpu_busy"], os.cpu_count() or 1))
    print("T_min %.1f s; seed egress %.2f F (engine %.2f F + web seed %.2f F); peer uploads %.2f..%.2f F, "
          "%d peers uploaded less than a piece%s" % (
              bound, (result["seed_up"] + result["web"]) / size, result["seed_up"] / size, result["web"] / size,
              result["peer_upload_min"] / size, result["peer_upload_max"] / size, result["peer_upload_zero"],
              "; wave rounds %d" % result["wave_rounds"] if "wave_rounds" in result else ""))
    p50, _p90, top = summarize(result["bt"])
    line = "bench: nodes=%d size=%d t_p50=%.1f t_max=%.1f t_min=%.1f ratio=%.2f seed_egress=%.2f" % (
        result["nodes"], size, p50, top, bound, top / bound, (result["seed_up"] + result["web"]) / size)
    if "central" in result:
        line += " wave=%.1f central=%.1f" % (max(result["wave"].values()), max(result["central"].values()))
    return line


def main(argv=None):
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="vmic.fleet swarm benchmark (root; network namespaces)")
    parser.add_argument("--nodes", type=int, default=20, help="hypervisor hosts (default 20, up to 100)")
    parser.add_argument("--size-mib", type=float, default=64, help="image size in MiB (default 64)")
    parser.add_argument("--rate-mbit", type=float, default=40, help="every node's link, both ways (default 40)")
    parser.add_argument("--seed-rate-mbit", type=float, default=None, help="repository link (default: --rate-mbit)")
    parser.add_argument("--piece-kib", type=int, default=4096, help="piece size in KiB (default 4096)")
    parser.add_argument("--engine", choices=("service", "bare"), default="service",
                        help="service = the collection's engine service; bare = plain libtorrent session")
    parser.add_argument("--engine-config", help="JSON object of extra engine config keys for the nodes")
    parser.add_argument("--seed-config", help="JSON object of extra engine config keys for the repository seed")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=600, help="seconds for the BitTorrent phase")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip the central HTTP push and the copy wave")
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 100:
        parser.error("--nodes must be between 1 and 100")
    lines = []
    for run in range(args.runs):
        workdir = args.workdir or tempfile.mkdtemp(prefix="vmic-bench-")
        try:
            result = bench_once(args, os.path.join(workdir, "run%d" % run))
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        lines.append(report(result))
        print(flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
