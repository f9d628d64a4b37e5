"""The test fleet itself: namespaces and links, the Range-capable web seed, the closed tracker."""

import json
import os
import subprocess
import sys
import time

import pytest

from testfleet import netns
from testfleet.httpd import __file__ as HTTPD_FILE
from testfleet.netns import Fleet, FleetError

PROBE_HTTP = r"""
import json, sys, urllib.request
out = []
for rng in sys.argv[2:]:
    req = urllib.request.Request(sys.argv[1], headers={"Range": rng} if rng != "-" else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            out.append([resp.status, resp.headers.get("Content-Range"), resp.read().hex()])
    except urllib.error.HTTPError as exc:
        out.append([exc.code, exc.headers.get("Content-Range"), ""])
print(json.dumps(out))
"""


def _namespaces(fleet):
    return [ns for ns in netns.list_namespaces() if ns.startswith(fleet.prefix)]


def test_fleet_hosts_reach_each_other_and_teardown_removes_everything():
    with Fleet(3, rate_mbit=20) as fleet:
        assert len(_namespaces(fleet)) == 4  # switch + 3 hosts
        for host in fleet:
            assert host.addr.startswith("198.18.")
            qdisc = subprocess.run(["tc", "-n", host.ns, "qdisc", "show", "dev", "eth0"], capture_output=True,
                                   text=True, check=True).stdout
            assert "tbf" in qdisc and "20Mbit" in qdisc
        # the root namespace has no route into the fleet; hosts reach each other over the switch
        code = "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); print('ok')"
        server = fleet[0].popen([sys.executable, "-c",
                                 "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
                                 "s.bind(('%s', 7000)); s.listen(); c,_=s.accept(); c.close()" % fleet[0].addr])
        for _attempt in range(50):
            probe = fleet[2].run([sys.executable, "-c", code, fleet[0].addr, "7000"], check=False)
            if probe.returncode == 0:
                break
        assert probe.stdout.strip() == "ok", probe.stderr
        server.wait(10)
        prefix = fleet.prefix
    assert [ns for ns in netns.list_namespaces() if ns.startswith(prefix)] == []


def test_fleet_cleans_up_after_an_error_inside():
    with pytest.raises(RuntimeError):
        with Fleet(2) as fleet:
            prefix = fleet.prefix
            fleet[0].popen(["sleep", "300"])
            raise RuntimeError("boom")
    assert [ns for ns in netns.list_namespaces() if ns.startswith(prefix)] == []


def test_fleet_refuses_addresses_outside_the_benchmark_range():
    with pytest.raises(FleetError, match="outside the benchmark range"):
        Fleet(1, subnet="10.0.0.0/16")


def test_web_seed_answers_ranges_and_counts_bytes(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(100000)
    (root / "img.raw").write_bytes(data)
    stats = tmp_path / "stats.json"
    with Fleet(2) as fleet:
        server = fleet[0].popen([sys.executable, HTTPD_FILE, "serve", "--root", str(root), "--bind", fleet[0].addr,
                                 "--port", "8080", "--stats-file", str(stats)])
        deadline = time.monotonic() + 10
        while not stats.exists():
            assert server.poll() is None, "httpd exited"
            assert time.monotonic() < deadline, "httpd did not start"
            time.sleep(0.05)
        url = "http://%s:8080/img.raw" % fleet[0].addr
        out = fleet[1].run([sys.executable, "-c", PROBE_HTTP, url, "bytes=10-19", "bytes=-5", "bytes=99990-",
                            "bytes=200000-300000", "-"]).stdout
        results = json.loads(out)
        assert results[0] == [206, "bytes 10-19/100000", data[10:20].hex()]
        assert results[1] == [206, "bytes 99995-99999/100000", data[-5:].hex()]
        assert results[2] == [206, "bytes 99990-99999/100000", data[99990:].hex()]
        assert results[3][:2] == [416, "bytes */100000"]
        assert results[4][0] == 200 and results[4][2] == data.hex()
        escape = fleet[1].run([sys.executable, "-c", PROBE_HTTP, "http://%s:8080/../../etc/passwd" % fleet[0].addr, "-"]).stdout
        assert json.loads(escape)[0][0] == 404
        server.terminate()
        server.wait(10)
    counters = json.loads(stats.read_text())
    assert counters["bytes_served"] == 10 + 5 + 10 + len(data)
    assert counters["range_requests"] == 4


def test_closed_tracker_refuses_unlisted_hashes_and_reloads_on_sighup(opentracker):
    v1 = "ab" * 20
    v2 = "cd" * 32
    with Fleet(1) as fleet:
        tracker = opentracker([v1], host=fleet[0])
        assert tracker.is_tracked(v1)
        refused = tracker.probe("ef" * 20)
        assert not refused["ok"] and "not authorized" in refused["failure"]
        assert not tracker.is_tracked(v2[:40])
        tracker.add([v2])  # a v2 hash is listed truncated to 20 bytes, as trackers see it
        assert tracker.is_tracked(v2[:40])
        tracker.set_whitelist([v2])
        assert not tracker.is_tracked(v1)
        assert open(tracker.whitelist_path, encoding="ascii").read() == v2[:40] + "\n"
        tracker.stop()
