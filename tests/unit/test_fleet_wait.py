# -*- coding: utf-8 -*-
"""The controller's judgement of a fleet's downloads (action vmic.fleet.fleet_wait), with plain data.

Each round rollout.yml hands fleet_wait every host's start result (image_sync phase=download wait=false) and the last
read of each pending host (image_info: the engine's torrents). These tests give it such results as Ansible registers
them: a host is done only when its engine holds every byte of every download it was given; an engine that lies about
a torrent it does not hold, reports an error, a host that went away, or the deadline fail it; nobody else waits for it.
"""

from ansible_collections.vmic.fleet.plugins.action.fleet_wait import default_interval, judge, judge_host, next_sleep, summary

MIB = 1024 * 1024
KEY_A = "a" * 40
KEY_B = "b" * 40


def start(*images):
    """An image_sync wait=false result: (key, size, total_done, action) per image."""
    return {"changed": bool(images), "needs_activation": bool(images), "images": [
        {"identifier": "6b1d1e2f-8c9a-4d3b-8e4f-2a3b4c5d6e7f", "version": "2", "key": key, "size": size, "total_done": done, "action": action}
        for key, size, done, action in images]}


def read(*torrents, **extra):
    """An image_info result: (key, total_done, state, rate) per torrent."""
    result = {"changed": False, "images": [], "engine_error": None, "torrents": [
        {"key": key, "total_done": done, "state": state, "download_rate": rate, "error": ""} for key, done, state, rate in torrents]}
    result.update(extra)
    return result


NOOP = {"changed": False, "needs_activation": False, "images": []}
DOWNLOADING = start((KEY_A, 8 * MIB, 0, "downloading"))


def test_noop_fleet_is_finished_at_once_without_reads():
    """A converged fleet: nothing pending after the start step, no round, no sleep."""
    hosts = ["hv%03d" % i for i in range(1, 451)]
    state = judge(hosts, hosts, dict((h, NOOP) for h in hosts), {}, {}, now=1000.0, timeout=3600)
    assert state["finished"] and state["pending"] == [] and len(state["done"]) == 450 and state["failed_hosts"] == {}
    assert next_sleep(state, default_interval(450), 1000.0) == 0.0


def test_fleet_progress_rounds_until_done():
    hosts = ["hv1", "hv2", "hv3"]
    starts = {"hv1": NOOP, "hv2": DOWNLOADING, "hv3": start((KEY_A, 8 * MIB, 8 * MIB, "downloaded"))}
    first = judge(hosts, hosts, starts, {}, {}, now=1000.0, timeout=3600)
    assert (first["round"], sorted(first["done"]), first["pending"]) == (0, ["hv1", "hv3"], ["hv2"])
    assert (first["bytes_done"], first["bytes_total"]) == (8 * MIB, 16 * MIB)
    assert next_sleep(first, 5.0, 1000.0) == 0.0                 # round 0: the start step was the first wait
    first = judge(hosts, hosts, starts, {"hv2": read((KEY_A, 0, "downloading", 0))}, first, now=1001.0, timeout=3600)
    assert next_sleep(first, 5.0, 1001.0) == 5.0                 # no rate yet: the interval
    second = judge(hosts, hosts, starts, {"hv2": read((KEY_A, 2 * MIB, "downloading", 3 * MIB))}, first, now=1005.0, timeout=3600)
    assert second["round"] == 2
    assert second["pending"] == ["hv2"] and second["bytes_done"] == 10 * MIB
    assert second["slowest"][0]["host"] == "hv2" and second["eta"] == 2.0
    assert next_sleep(second, 5.0, 1005.0) == 3.0               # the rate says 2 s more: read one second after
    assert any("hv2 25 %" in line for line in summary(second))
    third = judge(hosts, hosts, starts, {"hv2": read((KEY_A, 8 * MIB, "seeding", 0))}, second, now=1008.0, timeout=3600)
    assert third["finished"] and sorted(third["done"]) == hosts and third["round"] == 3
    assert (third["bytes_done"], third["bytes_total"]) == (16 * MIB, 16 * MIB)
    assert summary(third)[0].startswith("fleet downloads after 8 s (round 3): 3/3 hosts done, 0 failed, 0 downloading")


def test_engine_says_seeding_before_every_byte_not_done():
    """An engine that says seeding while it holds fewer bytes than the image keeps the host pending."""
    verdict = judge_host(DOWNLOADING, read((KEY_A, 8 * MIB - 1, "seeding", 0)))
    assert verdict["state"] == "pending"


def test_engine_holds_every_byte_of_another_torrent_not_done():
    """Only the torrents the start step handed over count: a complete other torrent does not make the host done."""
    verdict = judge_host(start((KEY_A, MIB, 0, "downloading"), (KEY_B, MIB, 0, "downloading")),
                         read((KEY_B, MIB, "seeding", 0), (KEY_A, MIB // 2, "downloading", 1)))
    assert verdict["state"] == "pending" and verdict["done"] == MIB + MIB // 2


def test_engine_lost_torrent_fails_host_only():
    hosts = ["hv1", "hv2"]
    starts = {"hv1": DOWNLOADING, "hv2": DOWNLOADING}
    first = judge(hosts, hosts, starts, {}, {}, now=0.0, timeout=60)
    state = judge(hosts, hosts, starts, {"hv1": read(), "hv2": read((KEY_A, MIB, "downloading", MIB))}, first, now=5.0, timeout=60)
    assert list(state["failed_hosts"]) == ["hv1"] and "lost the torrent" in state["failed_hosts"]["hv1"]
    assert state["pending"] == ["hv2"]
    assert any(line.startswith("  FAILED hv1: ") for line in summary(state))


def test_engine_error_fails_host():
    first = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {}, {}, now=0.0, timeout=60)
    reads = {"hv1": {"torrents": [{"key": KEY_A, "total_done": 0, "state": "error", "error": "No space left on device"}]}}
    state = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, reads, first, now=5.0, timeout=60)
    assert "No space left on device" in state["failed_hosts"]["hv1"] and state["finished"]


def test_unreachable_host_fails_others_converge():
    """A host that went away during the download is failed with Ansible's reason; the rest are judged on."""
    hosts = ["hv1", "hv2"]
    starts = {"hv1": DOWNLOADING, "hv2": DOWNLOADING}
    first = judge(hosts, hosts, starts, {}, {}, now=0.0, timeout=60)
    reads = {"hv1": {"unreachable": True, "msg": "Failed to connect to the host via ssh: No route to host"},
             "hv2": read((KEY_A, 8 * MIB, "seeding", 0))}
    state = judge(hosts, ["hv2"], starts, reads, first, now=40.0, timeout=60)
    assert state["failed_hosts"] == {"hv1": "Failed to connect to the host via ssh: No route to host"}
    assert state["done"] == ["hv2"] and state["finished"]
    assert (state["bytes_done"], state["bytes_total"]) == (8 * MIB, 16 * MIB)      # the lost host's bytes still count


def test_engine_not_answering_fails_host_after_grace():
    """An engine that does not answer (restarting) is not a failure at once; after two minutes it is."""
    first = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {}, {}, now=0.0, timeout=3600)
    down = read(engine_error="engine /run/vmic-engine/engine.sock: connection refused")
    state = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": down}, first, now=10.0, timeout=3600)
    state = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": down}, state, now=100.0, timeout=3600)
    assert state["pending"] == ["hv1"]
    back = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": read((KEY_A, MIB, "downloading", MIB))}, state, now=120.0, timeout=3600)
    assert back["pending"] == ["hv1"] and back["engine_down_since"] == {}
    again = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": down}, back, now=130.0, timeout=3600)
    gone = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": down}, again, now=250.0, timeout=3600)
    assert "has not answered for 120 s" in gone["failed_hosts"]["hv1"] and gone["finished"]


def test_engine_not_answering_stays_pending_until_deadline():
    """An engine that cannot be asked (restarting) is not a failure yet; at the deadline it is."""
    first = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {}, {}, now=0.0, timeout=60)
    down = read(engine_error="engine /run/vmic-engine/engine.sock: connection refused")
    state = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": down}, first, now=30.0, timeout=60)
    assert state["pending"] == ["hv1"] and "connection refused" in state["slowest"][0]["reason"]
    assert next_sleep(state, 45.0, 30.0) == 30.0                 # never past the deadline (round 1)
    late = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": down}, state, now=61.0, timeout=60)
    assert "not complete within 60 s" in late["failed_hosts"]["hv1"] and late["finished"]


def test_skipped_read_of_a_done_host_keeps_it_done():
    """Hosts done in an earlier round are not read again (their read is 'skipped') and stay done."""
    hosts = ["hv1", "hv2"]
    starts = {"hv1": DOWNLOADING, "hv2": DOWNLOADING}
    first = judge(hosts, hosts, starts, {}, {}, now=0.0, timeout=600)
    second = judge(hosts, hosts, starts, {"hv1": read((KEY_A, 8 * MIB, "seeding", 0)), "hv2": read((KEY_A, 0, "downloading", 0))},
                   first, now=5.0, timeout=600)
    third = judge(hosts, hosts, starts, {"hv1": {"skipped": True, "changed": False}, "hv2": read((KEY_A, 8 * MIB, "seeding", 0))},
                  second, now=10.0, timeout=600)
    assert sorted(third["done"]) == hosts and third["finished"] and third["bytes_done"] == 16 * MIB


def test_stale_reads_ignored_in_the_first_round():
    """Round 0 judges from the start results alone: a read registered earlier (another play) does not count."""
    state = judge(["hv1"], ["hv1"], {"hv1": DOWNLOADING}, {"hv1": read((KEY_A, 8 * MIB, "seeding", 0))}, {}, now=0.0, timeout=60)
    assert state["pending"] == ["hv1"]


def test_interval_grows_with_the_fleet():
    assert [default_interval(n) for n in (6, 50, 100, 450, 2000)] == [5.0, 5.0, 10.0, 30.0, 30.0]
