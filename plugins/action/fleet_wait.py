# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action vmic.fleet.fleet_wait: one round of following a fleet's downloads, on the controller (docs: plugins/modules/fleet_wait.py).

rollout.yml starts the downloads of every hypervisor at once (image_sync phase=download wait=false: each host's engine
downloads on its own) and then repeats a round until no host is pending:

    fleet_wait (once, on the controller): judge every host from its start result and its last read, print the fleet's
        progress, sleep until the next read is worth its cost
    image_info on the pending hosts only: one module run (one SSH round trip) per pending host
    fail the hosts fleet_wait found failed, so that activation skips them

The judgement is plain data (:func:`judge`, :func:`summary`, :func:`next_sleep`); the plugin only gathers the hosts'
results from hostvars, prints and sleeps.
"""

from __future__ import annotations

import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.validation import check_type_bool, check_type_float, check_type_list, check_type_str
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

MIB = 1024.0 * 1024.0
# Seconds between two rounds: about one per ten hosts (a round costs one module run per pending host), 5 to 30.
MIN_INTERVAL = 5.0
MAX_INTERVAL = 30.0
HOSTS_PER_SECOND = 10.0
# Never longer than this without a line for the operator, even with a longer interval.
HEARTBEAT = 30.0
SLOWEST = 5
# An engine that does not answer for this long (dead, not restarted) fails its host; a restart takes seconds.
ENGINE_GRACE = 120.0
DONE_STATES = ("seeding", "finished")


def default_interval(hosts):
    """Seconds between rounds for a fleet of ``hosts`` hosts: 5 s up to 50 hosts, then 0.1 s per host, at most 30 s."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, hosts / HOSTS_PER_SECOND))


def _watched(start):
    """The downloads a host's start result hands to its engine: [{key, size, total_done, name}]."""
    out = []
    for image in (start or {}).get("images") or []:
        if isinstance(image, dict) and image.get("key"):
            out.append({"key": image["key"], "size": int(image.get("size") or 0), "total_done": int(image.get("total_done") or 0),
                        "name": "%s %s" % (image.get("identifier"), image.get("version")), "finished": image.get("action") == "downloaded"})
    return out


def _reason(result, default):
    msg = (result or {}).get("msg")
    return str(msg) if msg else default


def judge_host(start, read):
    """One host's downloads from its start result and its last read (image_info's result, or None before the first read).

    Returns {state: done | failed | pending, done, size, rate, reason}: ``done``/``size`` bytes over its downloads,
    ``rate`` bytes/s (the engine's download rates), ``reason`` why it failed (or why it is pending without progress); ``engine_down`` is set when the engine did
    not answer.
    """
    watched = _watched(start)
    size = sum(item["size"] for item in watched)
    if not watched:
        return {"state": "done", "done": 0, "size": 0, "rate": 0, "reason": None}
    if read is None:
        done = sum(min(item["total_done"], item["size"]) for item in watched)
        state = "done" if all(item["finished"] for item in watched) else "pending"
        return {"state": state, "done": done, "size": size, "rate": 0, "reason": None}
    if read.get("failed"):
        return {"state": "failed", "done": 0, "size": size, "rate": 0, "reason": _reason(read, "reading its downloads failed")}
    if read.get("engine_error"):
        done = sum(min(item["total_done"], item["size"]) for item in watched)
        return {"state": "pending", "done": done, "size": size, "rate": 0, "reason": "engine: %s" % read["engine_error"], "engine_down": True}
    torrents = dict((t.get("key"), t) for t in read.get("torrents") or [] if isinstance(t, dict))
    done = rate = 0
    pending = False
    for item in watched:
        status = torrents.get(item["key"])
        if status is None:
            return {"state": "failed", "done": done, "size": size, "rate": 0,
                    "reason": "image %s: the engine lost the torrent %s" % (item["name"], item["key"])}
        if status.get("error"):
            return {"state": "failed", "done": done, "size": size, "rate": 0,
                    "reason": "image %s: engine error: %s" % (item["name"], status["error"])}
        got = min(int(status.get("total_done") or 0), item["size"])
        done += got
        if got < item["size"] or status.get("state") not in DONE_STATES:
            pending = True
            rate += int(status.get("download_rate") or 0)
    return {"state": "pending" if pending else "done", "done": done, "size": size, "rate": rate, "reason": None}


def judge(hosts, active, starts, reads, previous, now, timeout):
    """The fleet after one round, as plain data (also the ``previous`` of the next round).

    ``hosts``: every host of the play; ``active``: those neither failed nor unreachable; ``starts``/``reads``: host ->
    start result / last read (a host missing from ``reads`` was not read this round); ``previous``: the last round's
    result ({} before the first). A host once done or failed stays so; a host no longer active is failed (with the
    reason its last result gives); a host whose engine has not answered for ENGINE_GRACE seconds is failed; past
    ``timeout`` seconds from the first round every pending host is failed.
    """
    previous = previous or {}
    started_at = float(previous["started_at"]) if previous.get("started_at") is not None else float(now)
    deadline = started_at + float(timeout)
    done = list(previous.get("done") or [])
    failed = dict(previous.get("failed_hosts") or {})
    engine_down = dict(previous.get("engine_down_since") or {})
    active = set(active)
    pending, progress = [], {}
    bytes_done = int(previous.get("bytes_done_settled") or 0)
    bytes_total = int(previous.get("bytes_total_settled") or 0)
    settled_done, settled_total = bytes_done, bytes_total
    first = not previous
    for host in hosts:
        if host in done or host in failed:
            continue
        start = starts.get(host)
        read = None if first else reads.get(host)
        if read is not None and read.get("skipped"):
            read = None
        if host not in active:
            failed[host] = _reason(read if read is not None and (read.get("unreachable") or read.get("failed")) else start,
                                   "failed or unreachable")
            last = judge_host(start, None)      # its bytes as the start step saw them: still part of the fleet's total
            settled_done += last["done"]
            settled_total += last["size"]
            continue
        if start is None or start.get("failed") or start.get("skipped"):
            failed[host] = _reason(start, "no download step result")
            continue
        verdict = judge_host(start, read)
        if verdict.pop("engine_down", False):
            since = engine_down.setdefault(host, now)
            if now - since >= ENGINE_GRACE:
                verdict["state"] = "failed"
                verdict["reason"] = "its engine has not answered for %.0f s: %s" % (now - since, verdict["reason"])
        elif read is not None:
            engine_down.pop(host, None)
        if verdict["state"] == "pending" and now >= deadline:
            verdict["state"] = "failed"
            verdict["reason"] = "downloads not complete within %d s (%s)" % (timeout, _fraction(verdict["done"], verdict["size"]))
        if verdict["state"] == "done":
            done.append(host)
            settled_done += verdict["size"]
            settled_total += verdict["size"]
        elif verdict["state"] == "failed":
            failed[host] = verdict["reason"]
            settled_total += verdict["size"]
            settled_done += verdict["done"]
        else:
            pending.append(host)
            progress[host] = verdict
    total = settled_total + sum(p["size"] for p in progress.values())
    got = settled_done + sum(p["done"] for p in progress.values())
    slowest = sorted(pending, key=lambda h: (_ratio(progress[h]), h))[:SLOWEST]
    # Seconds until the last pending host is done at its current rate (None while one has no rate).
    etas = [(p["size"] - p["done"]) / float(p["rate"]) if p["rate"] > 0 else None for p in progress.values()]
    return {
        "round": int(previous.get("round", -1)) + 1, "started_at": started_at, "deadline": deadline, "elapsed": round(now - started_at, 1),
        "hosts": len(hosts), "all_hosts": list(hosts), "done": done, "failed_hosts": failed, "pending": pending, "finished": not pending,
        "bytes_done": got, "bytes_total": total, "bytes_done_settled": settled_done, "bytes_total_settled": settled_total,
        "slowest": [dict(progress[h], host=h) for h in slowest],
        "eta": round(max(etas), 1) if etas and None not in etas else None,
        "engine_down_since": dict((host, since) for host, since in engine_down.items() if host in pending),
    }


def _ratio(verdict):
    return float(verdict["done"]) / verdict["size"] if verdict["size"] else 1.0


def _fraction(done, size):
    return "%.0f %%, %.1f/%.1f MiB" % (100.0 * done / size if size else 100.0, done / MIB, size / MIB)


def summary(state):
    """The lines printed each round: hosts done / failed / downloading of all, bytes, the slowest hosts, failures."""
    lines = ["fleet downloads after %.0f s (round %d): %d/%d hosts done, %d failed, %d downloading; %s" % (
        state["elapsed"], state["round"], len(state["done"]), state["hosts"], len(state["failed_hosts"]), len(state["pending"]),
        _fraction(state["bytes_done"], state["bytes_total"]))]
    if state["slowest"]:
        lines.append("  slowest: " + "; ".join(
            "%s %s%s%s" % (item["host"], _fraction(item["done"], item["size"]),
                           ", %.1f MiB/s" % (item["rate"] / MIB) if item["rate"] else "",
                           " (%s)" % item["reason"] if item["reason"] else "") for item in state["slowest"]))
    for host in sorted(state["failed_hosts"])[:20]:
        lines.append("  FAILED %s: %s" % (host, state["failed_hosts"][host]))
    if len(state["failed_hosts"]) > 20:
        lines.append("  ... and %d more failed hosts" % (len(state["failed_hosts"]) - 20))
    return lines


def next_sleep(state, interval, now):
    """Seconds to sleep before the next read: ``interval``, shorter when every pending host's rate says it ends sooner
    (one second after the slowest one's estimated end, at least one second), never past the deadline.

    None after round 0: the start step itself took a pass over the fleet (about one ``ping``), time in which the engines
    were downloading already; the first read follows it at once and gives every host's rate.
    """
    if not state["pending"] or state["round"] == 0:
        return 0.0
    sleep = float(interval)
    if state.get("eta") is not None:
        sleep = min(sleep, max(1.0, state["eta"] + 1.0))
    return max(0.0, min(sleep, state["deadline"] - now))


class ActionModule(ActionBase):
    """See the module documentation (plugins/modules/fleet_wait.py)."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("previous", "timeout", "interval", "start_var", "read_var", "hosts", "sleep"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        try:
            previous = args.get("previous") or {}
            if not isinstance(previous, dict):
                raise TypeError("previous must be the last round's result (a dict)")
            timeout = check_type_float(args.get("timeout", 3600))
            start_var = check_type_str(args.get("start_var", "vmic_download"))
            read_var = check_type_str(args.get("read_var", "vmic_download_read"))
            hosts = check_type_list(args.get("hosts") or previous.get("all_hosts") or task_vars.get("ansible_play_hosts_all") or [])
            interval = args.get("interval")
            interval = default_interval(len(hosts)) if interval in (None, "", 0, "0") else check_type_float(interval)
            do_sleep = check_type_bool(args.get("sleep", True))
        except (TypeError, ValueError) as exc:
            raise AnsibleActionFail("fleet_wait: %s" % exc)
        active = task_vars.get("ansible_play_hosts") or []
        hostvars = task_vars.get("hostvars") or {}
        starts, reads = {}, {}
        for host in hosts:
            values = hostvars.get(host) or {}
            starts[host] = _plain(values.get(start_var))
            reads[host] = _plain(values.get(read_var))
        state = judge(hosts, active, starts, reads, previous, time.time(), timeout)
        lines = summary(state)
        for line in lines:
            display.display(line)
        sleep = next_sleep(state, interval, time.time()) if do_sleep else 0.0
        end = time.time() + sleep
        while time.time() < end:
            time.sleep(min(HEARTBEAT, end - time.time()))
            if time.time() < end:
                display.display("fleet downloads: %d host(s) downloading, next read in %.0f s" % (len(state["pending"]), end - time.time()))
        result.update(state, changed=False, msg=lines, interval=interval, slept=round(sleep, 1))
        return result


def _plain(value):
    """A registered result as a plain dict (None when the host has none)."""
    if value is None or not isinstance(value, dict):
        return None
    return dict(value)
