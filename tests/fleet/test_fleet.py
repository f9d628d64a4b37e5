"""The test fleet itself: booted Debian hosts (systemd-nspawn) reached over real SSH, and their removal.

Runs as root: ``.venv/bin/pytest tests/fleet -m fleet`` (about 20 s once the base root is cached;
the first run builds it with debootstrap, which takes a few minutes).
Everything goes through ``fleetctl.py``, exactly as the demo and the molecule scenarios use it.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testfleet import nspawn
from testfleet.netns import list_namespaces, namespace_pids

pytestmark = pytest.mark.fleet

FLEETCTL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testfleet", "fleetctl.py")
VENV_BIN = os.path.dirname(sys.executable)
HOSTS = ("alpha", "beta", "gamma")


def fleetctl(*args, check=True, timeout=900):
    """Run fleetctl with this interpreter; returns CompletedProcess (text)."""
    proc = subprocess.run([sys.executable, FLEETCTL] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("fleetctl %s exited %d:\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


def show(name):
    """The fleet's state (JSON) as fleetctl prints it."""
    return json.loads(fleetctl("show", "--name", name).stdout)


def ssh(state, host, *argv, check=True):
    """Run argv on a host over real SSH with the fleet's ssh_config."""
    proc = subprocess.run(nspawn.ssh_command(state["ssh_config"], host, list(argv)), capture_output=True, text=True,
                          timeout=120, check=False, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError("ssh %s %s exited %d: %s" % (host, argv, proc.returncode, proc.stderr))
    return proc


def ansible_env():
    """Environment for ansible from the venv (its tools first on PATH)."""
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0")
    env.pop("ANSIBLE_CONFIG", None)
    return env


def leftovers(state):
    """Everything of the fleet that still exists on the machine (empty dict = all gone)."""
    found = {}
    prefix = state["prefix"]
    namespaces = [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]
    if namespaces:
        found["namespaces"] = namespaces
    procs = []
    for cmdline_path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline_path, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode("utf-8", "replace")
        if prefix in text or state["data_dir"] in text:
            procs.append("%s: %s" % (cmdline_path.split("/")[2], text[:200]))
    if procs:
        found["processes"] = procs
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            if prefix in line or state["data_dir"] in line or state["state_dir"] in line:
                mounts.append(line.strip())
    if mounts:
        found["mounts"] = mounts
    paths = [p for p in [state["state_dir"], state["data_dir"]] if os.path.exists(p)]
    for host in state["hosts"]:
        paths += [p for p in host.get("cgroups", []) if os.path.exists(p)]
        propagate = "/run/systemd/nspawn/propagate/%s" % host["machine"]
        if os.path.exists(propagate):
            paths.append(propagate)
    if paths:
        found["paths"] = paths
    return found


@pytest.fixture(scope="module")
def fleet():
    """A fleet of three hosts, two of them in group ``pair``, links shaped to 100 Mbit/s."""
    name = "ftest-%d" % os.getpid()
    started = time.monotonic()
    fleetctl("create", "--name", name, "--hosts", ",".join(HOSTS), "--group", "pair=alpha,beta",
             "--rate-mbit", "100")
    state = show(name)
    print("\nfleet %s: create took %.1f s (%s)" % (name, time.monotonic() - started, state["timings"]))
    yield state
    fleetctl("destroy", "--name", name)


def test_state_and_inventory_describe_every_host(fleet):
    assert fleet["status"] == "ready"
    assert [h["name"] for h in fleet["hosts"]] == list(HOSTS)
    assert fleetctl("inventory", "--name", fleet["name"]).stdout.strip() == fleet["inventory"]
    inventory = fleetctl("inventory", "--name", fleet["name"], "--show").stdout
    for host in fleet["hosts"]:
        assert host["addr"] in inventory
        assert host["addr"].startswith(fleet["subnet"].split(".")[0] + ".")
    assert "ansible_user: root" in inventory
    assert os.stat(fleet["private_key"]).st_mode & 0o777 == 0o600
    listed = json.loads(fleetctl("list", "--json").stdout)
    assert any(f["name"] == fleet["name"] and f["alive"] and f["status"] == "ready" for f in listed)


def test_each_host_answers_ssh_with_its_own_host_key(fleet):
    keys = set()
    for host in HOSTS:
        assert ssh(fleet, host, "hostname").stdout.strip() == host
        keys.add(ssh(fleet, host, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1])
    assert len(keys) == len(HOSTS)


def test_ssh_refuses_a_host_key_that_is_not_the_hosts(fleet, tmp_path):
    # alpha's address with beta's key in known_hosts: strict checking must refuse the login.
    with open(fleet["known_hosts"], encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    alpha = next(h for h in fleet["hosts"] if h["name"] == "alpha")
    beta_key = next(line for line in lines if ",beta " in line).split(" ", 1)[1]
    wrong = tmp_path / "known_hosts"
    wrong.write_text("%s %s\n" % (alpha["addr"], beta_key))
    argv = ["ssh", "-F", fleet["ssh_config"], "-o", "UserKnownHostsFile=%s" % wrong, "alpha", "true"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 255
    assert "host key" in proc.stderr.lower() or "identification" in proc.stderr.lower()


def test_systemd_runs_inside_every_host(fleet):
    for host in HOSTS:
        proc = ssh(fleet, host, "systemctl", "is-system-running", "--wait", check=False)
        assert proc.stdout.strip() in ("running", "degraded"), (host, proc.stdout, proc.stderr)
        assert ssh(fleet, host, "cat", "/proc/1/comm").stdout.strip() == "systemd"
        assert ssh(fleet, host, "systemctl", "is-active", "ssh.service").stdout.strip() == "active"


def test_ansible_ping_over_ssh_with_the_generated_inventory(fleet):
    env = ansible_env()
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible"), "-i", fleet["inventory"], "all", "-m", "ansible.builtin.ping"],
                          capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(HOSTS)
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible"), "-i", fleet["inventory"], "pair", "-m", "ansible.builtin.command",
                           "-a", "hostname"], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("CHANGED") == 2 and "gamma" not in proc.stdout


def test_exec_runs_inside_the_container(fleet):
    proc = fleetctl("exec", "--name", fleet["name"], "beta", "--", "cat", "/etc/hostname")
    assert proc.stdout.strip() == "beta"
    proc = fleetctl("exec", "--name", fleet["name"], "--ssh", "gamma", "--", "sh", "-c", "exit 7", check=False)
    assert proc.returncode == 7
    proc = fleetctl("exec", "--name", fleet["name"], "nosuchhost", "--", "true", check=False)
    assert proc.returncode == 1 and "nosuchhost" in proc.stderr


def test_hosts_reach_each_other_by_name(fleet):
    probe = "import socket; s = socket.create_connection(('gamma', 22), 5); print(s.recv(64).decode().strip())"
    assert ssh(fleet, "alpha", "python3", "-c", probe).stdout.startswith("SSH-2.0-")


def test_links_are_shaped(fleet):
    for host in fleet["hosts"]:
        out = subprocess.run(["tc", "-n", host["ns"], "qdisc", "show", "dev", "eth0"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert "tbf" in out and "100Mbit" in out


def test_changes_stay_in_the_hosts_upper_directory(fleet):
    ssh(fleet, "alpha", "sh", "-c", "echo written-on-alpha > /root/marker")
    alpha = next(h for h in fleet["hosts"] if h["name"] == "alpha")
    with open(os.path.join(alpha["upper"], "root", "marker"), encoding="utf-8") as handle:
        assert handle.read() == "written-on-alpha\n"
    assert not os.path.exists(os.path.join(fleet["base_root"], "root", "marker"))
    assert ssh(fleet, "beta", "test", "-e", "/root/marker", check=False).returncode == 1


def test_create_refuses_a_name_in_use(fleet):
    proc = fleetctl("create", "--name", fleet["name"], "--hosts", "other", check=False)
    assert proc.returncode == 1 and "exists" in proc.stderr
    assert show(fleet["name"])["owner_pid"] == fleet["owner_pid"]


@pytest.mark.parametrize("args, reason", [
    (["--hosts", "Bad_Name"], "bad host name"),
    (["--hosts", "ctl"], "bad host name"),
    (["--hosts", "a,a"], "given twice"),
    (["--hosts", "hv03..hv01"], "host range"),
    (["--hosts", "a,b", "--group", "g=a,c"], "not a host of the fleet"),
])
def test_create_rejects_bad_fleets_before_booting_anything(args, reason):
    proc = fleetctl("create", "--name", "ftest-bad-%d" % os.getpid(), *args, check=False)
    assert proc.returncode == 1 and reason in proc.stderr
    assert nspawn.load_state("ftest-bad-%d" % os.getpid()) is None


def test_host_ranges_keep_their_padding():
    assert nspawn.expand_names("repo,tracker,hv01..hv03,hv9..hv10") == ["repo", "tracker", "hv01", "hv02", "hv03", "hv9", "hv10"]


def test_destroy_powers_off_and_leaves_nothing(fleet):
    pids = [h["nspawn_pid"] for h in fleet["hosts"]]
    started = time.monotonic()
    fleetctl("destroy", "--name", fleet["name"])
    print("\nfleet %s: destroy took %.1f s" % (fleet["name"], time.monotonic() - started))
    assert not any(nspawn.pid_alive(pid) for pid in pids)
    assert leftovers(fleet) == {}
    again = fleetctl("destroy", "--name", fleet["name"])
    assert "nothing to do" in again.stderr


def test_destroy_cleans_up_after_a_killed_supervisor():
    name = "ftest-kill-%d" % os.getpid()
    fleetctl("create", "--name", name, "--hosts", "solo")
    state = show(name)
    solo = state["hosts"][0]
    assert namespace_pids(solo["ns"])
    os.kill(state["owner_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while nspawn.pid_alive(state["owner_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    listed = json.loads(fleetctl("list", "--json").stdout)
    assert any(f["name"] == name and not f["alive"] for f in listed)
    fleetctl("destroy", "--name", name)
    assert leftovers(state) == {}
