"""`make scale`: the control plane measured on HOSTS light hypervisors (default 450) over real SSH.

    .venv/bin/python tests/scale/scale.py [--hosts 450] [--batch 25] [--forks 50] [--keep-going] [--mitogen]

One run, one inventory, one ansible.cfg (tests/scale/ansible.cfg):

1. a booted test fleet ``vmic-scale`` with ``repo`` and ``tracker`` (systemd-nspawn, 198.19.0.0/20),
   deployed by ``site.yml --limit repository:trackers`` exactly as the demo deploys them;
2. HOSTS light hosts (tests/testfleet/lighthost.py) on the same bridge, in cluster_a / cluster_b,
   provisioned by the harness with what the hypervisor role would leave (store, archive and list
   directories, the CA directory, the site TLS CA, the engine's code, config and process);
3. the demo's PKI and content (demo/make_pki.py, demo/make_content.py) published by ``publish.yml``;
   a first ``rollout.yml`` converges the fleet;
4. measured: ``ansible hypervisors -m ping``, ``status.yml`` on the converged fleet, a no-op
   ``rollout.yml``; wall time and controller CPU (``getrusage(RUSAGE_CHILDREN)`` of each run; the
   ControlPersist SSH masters detach and are not counted); with ``--baseline DIR`` the same
   ``status.yml`` and no-op ``rollout.yml`` from another playbook directory too (before / after);
5. the one-change rollout: stage 2 of the demo content (a new version of one 8 MiB image for every
   host) published, ``rollout.yml`` timed, the slowest host's transfer read from the fleet report,
   ``status.yml`` counts the converged hosts (``--no-change`` skips it);
6. the light hosts' memory (Pss of sshd, engine, nspawn) and their engines' idle CPU.

Every Ansible run happens in the fleet's controller namespace (``ip netns exec``), where every host is
reachable directly, as from a site's controller. The last line is the issue's machine-readable
``scale:`` line; what is not measured yet prints ``na``. Everything made is removed at the end, on
Ctrl-C / SIGTERM, and at the start of the next run if a run died.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from testfleet import lighthost, nspawn  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.collection import REPO_ROOT, ensure_collection_path  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.netns import FleetError  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.waiting import machine_jiffies  # noqa: E402  pylint: disable=wrong-import-position

FLEET = "vmic-scale"
SUBNET = "198.19.0.0/20"
WORK = os.path.join(REPO_ROOT, ".tmp", "scale")
VENV_BIN = os.path.dirname(sys.executable)
STORE_DIRS = ("/var/lib/vmic/images", "/var/lib/vmic/archive", "/var/lib/vmic/lists")
CA_DIR = "/etc/grid-security/certificates"
SITE_CA_FILES = ("/etc/vmic/site-ca.pem", "/usr/local/share/ca-certificates/vmic-site-ca.crt")
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# ControlPersist sockets of this harness's ansible runs: a directory of its own, emptied (masters stopped) at the start
# and the end of a run, so that a master of an earlier run (to an address a new light host has now) is never reused.
# A unix socket path has at most 107 bytes: ansible's %C hash is 40.
CONTROL_DIR = os.path.join(WORK, "cp") if len(os.path.join(WORK, "cp")) < 60 else "/run/vmic-scale-cp"
TRANSFER_RE = re.compile(r"\b(hv\d+): \d+ image\(s\), added \d+, transfer ([0-9.]+) s")
# fleet_wait's progress line: the hosts whose download is complete (outage_rollout stops the repository at the first)
FLEET_DONE_RE = re.compile(r"\(round \d+\): (\d+)/\d+ hosts done")
# ansible -o -m find: one line per host with its "matched" count
PARTIAL_RE = re.compile(r"^(hv\d+) \| SUCCESS => .*\"matched\": (\d+)", re.M)
# the fleet report's hosts that did not converge, and PLAY RECAP lines of hosts that failed or were unreachable
REPORTED_FAILED_RE = re.compile(r"\b(hv\d+): (?:FAILED|NOT ACTIVATED|no result)")
RECAP_RE = re.compile(r"^(hv\d+)\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
# seconds kept for removing the fleets at the end (450 light hosts: about 25 s, the booted fleet a few)
TEARDOWN_RESERVE = 120


def say(message):
    """Progress on stderr, timestamped."""
    sys.stderr.write("[%s] scale: %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


class Run:
    """Wall time and controller CPU of one child process (RUSAGE_CHILDREN before and after)."""

    def __init__(self, label, argv, env, log_path, timeout, watch=None):
        self.label = label
        self.watch = watch          # called with the log's path every half second while the run goes on
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.timeout = timeout
        self.wall = None
        self.cpu = None
        self.rc = None
        self.tasks = []
        self.machine = None         # the machine's CPU during the run: busy and softirq (% of all cores), load average at the end

    def __call__(self):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before = machine_jiffies()
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env, cwd=REPO_ROOT)
            try:
                deadline = time.monotonic() + self.timeout
                while self.watch is not None and proc.poll() is None and time.monotonic() < deadline:
                    self.watch(self.log_path)
                    time.sleep(0.5)
                self.rc = proc.wait(max(1.0, deadline - time.monotonic()))
            except BaseException:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        self.wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        cpu_after = machine_jiffies()
        total = max(1, cpu_after[1] - cpu_before[1])
        self.machine = {"busy_pct": round(100.0 * (cpu_after[0] - cpu_before[0]) / total, 1),
                        "softirq_pct": round(100.0 * (cpu_after[2] - cpu_before[2]) / total, 1), "load1": os.getloadavg()[0]}
        say("%s: exit %d, %.1f s wall, %.1f s controller CPU; machine %.0f %% busy (%.0f %% softirq), load %.1f (log %s)" % (
            self.label, self.rc, self.wall, self.cpu, self.machine["busy_pct"], self.machine["softirq_pct"], self.machine["load1"],
            self.log_path))
        return self

    def tail(self, lines=40):
        """Last lines of the run's output."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])


class Scale:
    """One `make scale` run; see the module docstring."""

    def __init__(self, args):
        self.args = args
        self.hosts = ["hv%03d" % i for i in range(1, args.hosts + 1)]
        half = (len(self.hosts) + 1) // 2
        self.groups = {"cluster_a": self.hosts[:half], "cluster_b": self.hosts[half:]}
        self.demo_dir = os.path.join(WORK, "demo")
        self.vars_inventory = os.path.join(WORK, "scale-vars.yml")
        self.t0 = time.monotonic()
        self.skipped = []           # steps left out to keep the run within --budget minutes
        self.logs = os.path.join(WORK, "logs")
        self.boot = None
        self.light = None
        self.results = {}
        self.env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                        ANSIBLE_COLLECTIONS_PATH=ensure_collection_path(), ANSIBLE_CONFIG=os.path.join(HERE, "ansible.cfg"),
                        ANSIBLE_FORKS=str(args.forks), VMIC_DEMO_DIR=self.demo_dir, ANSIBLE_NOCOLOR="1",
                        ANSIBLE_LOCAL_TEMP=os.path.join(WORK, "ansible-tmp"), ANSIBLE_CALLBACKS_ENABLED="scale_timer",
                        ANSIBLE_SSH_CONTROL_PATH_DIR=CONTROL_DIR,
                        ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, "callback_plugins"))

    # -- set-up -------------------------------------------------------------------------------------

    def cleanup_earlier(self):
        """Remove what a run that died left: the booted fleet, light fleets of dead owners."""
        state = nspawn.load_state(FLEET)
        if state is not None and not nspawn.owner_alive(state):
            say("removing the booted fleet of an earlier run")
            nspawn.cleanup_from_state(state)
        lighthost.cleanup_stale(progress=say)
        stop_ssh_masters(CONTROL_DIR, progress=say)

    def content(self):
        """The demo's PKI and stage-1 content (three qcow2 images of ``--first-mib`` MiB, two catalogues), and the
        light hosts' inventory variables (``vmic_engine`` with ``--engine-timeout``)."""
        os.makedirs(self.logs, exist_ok=True)
        # make_content.py keeps an image an earlier run made (of whatever size): the first rollout's are made afresh
        shutil.rmtree(os.path.join(self.demo_dir, "images"), ignore_errors=True)
        for argv in ([sys.executable, os.path.join(REPO_ROOT, "demo", "make_pki.py"), os.path.join(self.demo_dir, "pki")],
                     [sys.executable, os.path.join(REPO_ROOT, "demo", "make_content.py"), self.demo_dir, "1", str(self.args.first_mib)]):
            subprocess.run(argv, check=True, env=self.env, stdout=subprocess.DEVNULL)
        # publish.yml keeps its state (versions, hash cache, policy) in the publish dir: start clean.
        shutil.rmtree(os.path.join(self.demo_dir, "publish"), ignore_errors=True)
        with open(self.vars_inventory, "w", encoding="utf-8") as handle:
            handle.write("# make scale: inventory variables of its light hypervisors (450 of them share this machine's cores)\n"
                         "all:\n  children:\n    hypervisors:\n      vars:\n        vmic_engine:\n          kind: libtorrent\n"
                         "          socket: /run/vmic-engine/engine.sock\n          timeout: %d\n" % self.args.engine_timeout)

    def boot_services(self):
        """repo and tracker: booted hosts of the test fleet, in 198.19.0.0/20."""
        self.boot = nspawn.NspawnFleet(FLEET, ["repo", "tracker"], subnet=SUBNET, progress=say)
        self.boot.create()

    def render_engine(self):
        """The role vmic.fleet.engine's config, unit and files as a hypervisor of this inventory gets them."""
        os.makedirs(os.path.join(WORK, "engine"), exist_ok=True)
        one = os.path.join(WORK, "render-inventory.yml")
        with open(one, "w", encoding="utf-8") as handle:
            handle.write("all:\n  children:\n    cluster_a:\n      hosts:\n        %s: {}\n" % self.hosts[0])
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", one, "-i", os.path.join(REPO_ROOT, "inventory", "demo"),
                os.path.join(HERE, "render_engine.yml"), "-e", "lighthost_render_dir=%s" % os.path.join(WORK, "engine"),
                "-e", "lighthost_render_host=%s" % self.hosts[0]]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False, timeout=300)
        if proc.returncode != 0:
            raise FleetError("rendering the engine role failed:\n%s" % (proc.stdout + proc.stderr)[-3000:])
        return lighthost.EngineLayout(os.path.join(WORK, "engine"))

    def light_hosts(self, layout):
        """The HOSTS light hypervisors, provisioned as the hypervisor role and site.yml's trust play would."""
        state = self.boot._state()  # pylint: disable=protected-access
        pki = os.path.join(self.demo_dir, "pki")
        files = {}
        for name in sorted(os.listdir(os.path.join(pki, "ca"))):
            with open(os.path.join(pki, "ca", name), "rb") as handle:
                files[os.path.join(CA_DIR, name)] = (handle.read(), 0o644)
        with open(os.path.join(pki, "ca.pem"), "rb") as handle:
            site_ca = handle.read()
        for path in SITE_CA_FILES:
            files[path] = (site_ca, 0o644)
        # the system bundle as update-ca-certificates (site.yml's trust play) leaves it: the engine's web seeds are
        # HTTPS URLs of the repository, checked by libtorrent against OpenSSL's default store
        with open(os.path.join(nspawn.base_root_path(), SYSTEM_CA_BUNDLE.lstrip("/")), "rb") as handle:
            files[SYSTEM_CA_BUNDLE] = (handle.read().rstrip(b"\n") + b"\n" + site_ca, 0o644)
        hosts_text = "".join("%s\t%s\n" % (h["addr"], h["name"]) for h in state["hosts"])
        self.light = lighthost.LightFleet(FLEET, self.hosts, layout, os.path.join(REPO_ROOT, "plugins", "module_utils"),
                                          attach=state, files=files, dirs=STORE_DIRS, hosts_text=hosts_text,
                                          batch=self.args.batch, progress=say)
        self.light.create(groups=self.groups)

    # -- ansible ------------------------------------------------------------------------------------

    def inventories(self):
        """-i arguments: the booted fleet's hosts, the light hosts, the demo's groups and settings."""
        return ["-i", self.boot.inventory_path, "-i", self.light.inventory_path, "-i", os.path.join(REPO_ROOT, "inventory", "demo"),
                "-i", self.vars_inventory]

    def ansible(self, label, argv, timeout=3600, must_pass=True, watch=None, env=None):
        """Run an ansible command in the controller namespace (``env``: instead of the run's); returns the Run."""
        timer = os.path.join(self.logs, label + ".tasks.jsonl")
        if os.path.exists(timer):
            os.unlink(timer)
        env = dict(env or self.env, SCALE_TIMER_FILE=timer)
        run = Run(label, self.light.controller_argv(argv), env, os.path.join(self.logs, label + ".log"), timeout, watch=watch)()
        run.tasks = _read_tasks(timer)
        self.results[label] = run
        if must_pass and run.rc != 0:
            raise FleetError("%s failed (exit %d); end of its output:\n%s" % (label, run.rc, run.tail()))
        return run

    def playbook(self, label, playbook, *extra, **kwargs):
        """ansible-playbook with the run's inventories (playbooks from ``directory``, default --playbooks)."""
        directory = kwargs.pop("directory", None) or self.args.playbooks
        argv = [os.path.join(VENV_BIN, "ansible-playbook")] + self.inventories() + [
            os.path.join(directory, playbook)] + list(extra)
        return self.ansible(label, argv, **kwargs)

    # -- the run ------------------------------------------------------------------------------------

    def run(self):
        """Everything, in order; returns the scale: line."""
        t0 = self.t0 = time.monotonic()
        self.cleanup_earlier()
        self.content()
        self.boot_services()
        layout = self.render_engine()
        self.light_hosts(layout)
        self.results["light_timings"] = dict(self.light.timings)
        say("measuring the light hosts' memory and their engines' idle CPU (%d s)" % self.args.idle)
        self.results["memory"] = lighthost.measure(self.light, self.args.idle)
        for line in lighthost.format_measure(self.results["memory"]):
            say(line)
        if not self.args.ping_only:
            self.playbook("site-services", "site.yml", "--limit", "repository:trackers")
            self.playbook("publish", "publish.yml")
            if self.args.faulty:
                self.converge_faulty()
            else:
                self.playbook("converge", "rollout.yml")
        ping = self.ansible("ping", [os.path.join(VENV_BIN, "ansible")] + self.inventories() + ["hypervisors", "-m", "ansible.builtin.ping",
                                                                                                "-o"])
        status = noop = None
        self.results["converged"] = None
        if not self.args.ping_only:
            status = self.playbook("status", "status.yml")
            noop = self.playbook("noop", "rollout.yml")
            self.results["converged"] = self.converged_count("status")
            if self.args.baseline:
                self.playbook("baseline-status", "status.yml", directory=self.args.baseline)
                self.playbook("baseline-noop", "rollout.yml", directory=self.args.baseline)
            if self.args.mitogen and self.fits("mitogen measurements", 1.5 * (ping.wall + status.wall + noop.wall) + 180):
                self.measure_mitogen()
            if not self.args.no_change:
                self.change()
            if not self.args.no_outage:
                self.outage()
            if self.args.mitogen and not self.args.no_change and self.fits("change-mitogen", self.rollout_estimate()):
                self.change_mitogen()
        self.results["total_s"] = time.monotonic() - t0
        return self.report(ping, status, noop)

    def converge_faulty(self):
        """The first rollout with ``--faulty`` percent of the hosts (the last ones, never the canary) taken off the network
        once their download started: the others must converge; then the hosts come back and a second rollout.yml
        must complete them (status.yml counts them later: faulty_converged)."""
        count = max(1, int(round(len(self.hosts) * self.args.faulty / 100.0)))
        faulty = self.hosts[-count:]
        cut = []

        def watch(log_path):
            if cut:
                return
            with open(log_path, encoding="utf-8", errors="replace") as handle:
                if "(round 0)" not in handle.read():
                    return
            for name in faulty:
                self.light.set_link(name, False)
            cut.append(time.monotonic())
            say("converge: %d host(s) taken off the network during the download: %s" % (count, ", ".join(faulty)))

        try:
            run = self.playbook("converge", "rollout.yml", must_pass=False, watch=watch)
        finally:
            for name in faulty:
                self.light.set_link(name, True)
        with open(run.log_path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        reported = [name for name in faulty if re.search(r"\b%s: (FAILED|NOT ACTIVATED|no result)" % name, text)]
        converged = len(set(re.findall(r"\b(hv\d+): \d+ image\(s\), added", text)) - set(faulty))
        say("converge with %d host(s) off the network: exit %d, %d/%d other host(s) converged, %d/%d faulty host(s) named in "
            "the fleet report" % (count, run.rc, converged, len(self.hosts) - count, len(reported), count))
        deadline = time.monotonic() + 120
        while not all(self.light.answers_ssh(name) for name in faulty) and time.monotonic() < deadline:
            time.sleep(1)
        # the operator's re-run: the hosts that failed, as the fleet report and the recap name them (all of them when
        # the log names none); a host still failing is counted later by status.yml, not fatal here
        failed = sorted(set(REPORTED_FAILED_RE.findall(text)) | set(
            host for host, unreachable, failures in RECAP_RE.findall(text) if int(unreachable) or int(failures)) | set(faulty))
        limit = ["--limit", ",".join(["localhost"] + failed)] if failed and run.rc != 0 else []
        say("re-running rollout.yml for %s" % ("%d host(s): %s" % (len(failed), ", ".join(failed)) if limit else "every host"))
        self.playbook("converge-rerun", "rollout.yml", *limit, must_pass=False)
        self.results["faulty"] = {"hosts": faulty, "first_rc": run.rc, "others_converged": converged, "reported": reported,
                                  "rerun_hosts": failed if limit else "all"}

    def change(self):
        """The one-change rollout: a new version of one 8 MiB image for every host (demo content stage 2), really
        transferred; its wall time, the slowest host's transfer (the fleet report's ``transfer`` of the engines'
        own clocks), then status.yml's count of converged hosts."""
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "demo", "make_content.py"), self.demo_dir, "2"], check=True,
                       env=self.env, stdout=subprocess.DEVNULL)
        self.playbook("publish-change", "publish.yml")
        started = time.time()
        run = self.playbook("change", "rollout.yml", must_pass=False)
        self.change_timeline(started, run)
        with open(run.log_path, encoding="utf-8", errors="replace") as handle:
            transfers = dict((host, float(seconds)) for host, seconds in TRANSFER_RE.findall(handle.read()))
        self.results["transfers"] = transfers
        self.playbook("status-after-change", "status.yml", must_pass=False)
        self.results["converged_after_change"] = self.converged_count("status-after-change")
        say("one-change rollout: exit %d, %d host(s) report a transfer, slowest %.1f s" % (
            run.rc, len(transfers), max(transfers.values()) if transfers else float("nan")))

    # -- the one-change rollout over time (tests/scale/plot.py) ------------------------------------------------

    def change_timeline(self, started, run):
        """Per host, when its engine completed the change's download and when the new image entered its store (seconds
        since ``started``, the rollout's start), read from the engines and the hosts' stores right after the rollout;
        the PNG .tmp/scale/change.png of hosts completed over time."""
        import plot  # pylint: disable=import-outside-toplevel  # tests/scale/plot.py (needs the collection importable)
        times = plot.fleet_times(started, [(h.name, h.engine_socket_outside, h.path) for h in self.light.hosts])
        self.results["change_times"] = times
        for host, value in sorted(times.items()):
            if value and value.get("error"):
                say("change timeline: %s: %s" % (host, value["error"]))
        counts = dict((label, len(plot.completed_curve(times, label)) - 1) for label in ("downloaded", "activated"))
        say("change timeline: %d host(s) downloaded, %d activated (engines' completion clock, the stores' ctime)" % (
            counts["downloaded"], counts["activated"]))
        path = os.path.join(WORK, "change.png")
        title = "one-change rollout.yml: %d hosts (%s), %s" % (len(self.hosts), plot.machine_size(), time.strftime("%Y-%m-%d %H:%M"))
        try:
            width, height = plot.write_png(path, times, len(self.hosts), title, end=run.wall)
        except ImportError as exc:
            say("change timeline: no PNG (%s; make scale installs tests/scale/requirements.txt)" % exc)
            return
        self.results["change_png"] = path
        say("change timeline: %s (%dx%d)" % (path, width, height))

    def change_timeline_summary(self):
        """scale.json's part of the timeline: per host {downloaded, activated} seconds, the PNG's path."""
        if "change_times" not in self.results:
            return {}
        return {"change_hosts": self.results["change_times"], "change_png": self.results.get("change_png")}

    # -- mitogen ---------------------------------------------------------------------------------------------

    def mitogen_env(self):
        """The run's environment with the strategy mitogen_linear of the installed mitogen (tests/scale/requirements.txt)."""
        try:
            import ansible_mitogen  # pylint: disable=import-outside-toplevel
        except ImportError as exc:
            raise FleetError("--mitogen: mitogen is not installed in %s (make scale installs tests/scale/requirements.txt): %s" % (
                VENV_BIN, exc)) from exc
        strategies = os.path.join(os.path.dirname(ansible_mitogen.__file__), "plugins", "strategy")
        return dict(self.env, ANSIBLE_STRATEGY_PLUGINS=strategies, ANSIBLE_STRATEGY="mitogen_linear")

    def measure_mitogen(self):
        """ping, status.yml and the no-op rollout.yml again under mitogen_linear, on the same converged fleet; a second
        site.yml on the booted hosts (repository, tracker: the light hosts have no systemd) without and with it."""
        env = self.mitogen_env()
        ping = [os.path.join(VENV_BIN, "ansible")] + self.inventories() + ["hypervisors", "-m", "ansible.builtin.ping", "-o"]
        self.ansible("ping-mitogen", ping, env=env, must_pass=False)
        self.playbook("status-mitogen", "status.yml", env=env, must_pass=False)
        self.playbook("noop-mitogen", "rollout.yml", env=env, must_pass=False)
        self.results["converged_mitogen"] = self.converged_count("status-mitogen")
        self.playbook("site-again", "site.yml", "--limit", "repository:trackers", must_pass=False)
        self.playbook("site-again-mitogen", "site.yml", "--limit", "repository:trackers", env=env, must_pass=False)
        for label in ("ping-mitogen", "status-mitogen", "noop-mitogen", "site-again", "site-again-mitogen"):
            run = self.results[label]
            if run.rc != 0:
                say("%s failed (exit %d); end of its output:\n%s" % (label, run.rc, run.tail()))

    def change_mitogen(self):
        """One more one-change rollout (a new version of the 8 MiB image for every host: demo content stage 5, after the
        outage rollouts' 3 and 4) under mitogen_linear: image_sync's download and activation, image_info's reads and
        fleet_wait under mitogen; then status.yml (plain) counts the converged hosts."""
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "demo", "make_content.py"), self.demo_dir, "5"], check=True,
                       env=self.env, stdout=subprocess.DEVNULL)
        self.playbook("publish-change-mitogen", "publish.yml")
        run = self.playbook("change-mitogen", "rollout.yml", env=self.mitogen_env(), must_pass=False)
        with open(run.log_path, encoding="utf-8", errors="replace") as handle:
            self.results["transfers_mitogen"] = dict((host, float(seconds)) for host, seconds in TRANSFER_RE.findall(handle.read()))
        self.playbook("status-after-change-mitogen", "status.yml", must_pass=False)
        self.results["converged_after_change_mitogen"] = self.converged_count("status-after-change-mitogen")
        if run.rc != 0:
            say("change-mitogen failed (exit %d); end of its output:\n%s" % (run.rc, run.tail()))

    def mitogen_fields(self):
        """[(name, value)] of the scale-mitogen: line ([] without --mitogen): wall times (a failed run: fail), ratios to
        ping under mitogen, controller CPU, the hosts status.yml under mitogen found converged."""
        if "ping-mitogen" not in self.results:
            return []
        labels = ("ping-mitogen", "status-mitogen", "noop-mitogen", "site-again", "site-again-mitogen")
        runs = dict((label, self.results.get(label)) for label in labels)

        def wall(label):
            run = runs[label]
            return "fail" if run.rc != 0 else "%.1f" % run.wall

        def ratio(label):
            ping = runs["ping-mitogen"]
            return "%.2f" % (runs[label].wall / ping.wall) if runs[label].rc == 0 and ping.rc == 0 and ping.wall else "na"

        return [
            ("ping_mitogen", wall("ping-mitogen")), ("status_mitogen", wall("status-mitogen")), ("status_mitogen_ratio", ratio("status-mitogen")),
            ("noop_mitogen", wall("noop-mitogen")), ("noop_mitogen_ratio", ratio("noop-mitogen")),
            ("converged_mitogen", "%d/%d" % (self.results["converged_mitogen"], len(self.hosts))),
            ("site_again", wall("site-again")), ("site_again_mitogen", wall("site-again-mitogen")),
            ("cpu_ping_mitogen", "%.1f" % runs["ping-mitogen"].cpu), ("cpu_status_mitogen", "%.1f" % runs["status-mitogen"].cpu),
            ("cpu_noop_mitogen", "%.1f" % runs["noop-mitogen"].cpu),
        ] + self.change_mitogen_fields()

    def change_mitogen_fields(self):
        """The scale-mitogen: line's fields of the one-change rollout under mitogen ([] when it did not run)."""
        run = self.results.get("change-mitogen")
        if run is None:
            return []
        transfers = self.results.get("transfers_mitogen") or {}
        return [("change_mitogen", "fail" if run.rc != 0 else "%.1f" % run.wall),
                ("transfer_max_mitogen", "%.1f" % max(transfers.values()) if transfers else "na"),
                ("converged_after_change_mitogen", "%d/%d" % (self.results["converged_after_change_mitogen"], len(self.hosts))),
                ("cpu_change_mitogen", "%.1f" % run.cpu)]

    # -- the time budget ---------------------------------------------------------------------------------------

    def fits(self, step, estimate):
        """Whether ``step``, expected to take ``estimate`` seconds, ends within --budget minutes (with the teardown's
        reserve); a step that does not is left out, named in the output and in scale.json."""
        elapsed = time.monotonic() - self.t0
        if elapsed + estimate + TEARDOWN_RESERVE <= self.args.budget * 60:
            return True
        say("%s left out: %.0f s so far, about %.0f s more would pass the %d-minute budget (--budget)" % (
            step, elapsed, estimate, self.args.budget))
        self.skipped.append(step)
        return False

    def rollout_estimate(self):
        """Seconds a publish + rollout.yml + status.yml of one new image take, from the one-change rollout's (or the
        first rollout's) figures of this run."""
        runs = [self.results.get(label) for label in ("publish-change", "change", "status-after-change")]
        if not all(runs):
            runs = [self.results.get(label) for label in ("publish", "converge", "status")]
        return sum(run.wall for run in runs if run) + 30

    # -- rollouts with a part of the site down ----------------------------------------------------------------

    def outage(self):
        """Two more rollouts of a new version of the 8 MiB image for every host (demo content stages 3 and 4), each with a
        part of the site down: (a) the repository host's nginx and seeding engine stopped once one hypervisor holds the
        complete new image (every piece is in the swarm; the activation then has no repository), started again after the
        rollout; (b) the tracker's opentracker stopped for the whole rollout (peers from the DHT and PEX, or the web seed). After
        each, status.yml counts the converged hosts and no store may hold a partial file (repo_stopped_converged,
        tracker_stopped_converged)."""
        ping = self.results["ping"].wall
        if self.fits("repo-stopped", self.rollout_estimate() + ping):
            self.outage_rollout("repo-stopped", 3, "repo", ("nginx.service", "vmic-engine.service"), when_seeded=True)
        if self.fits("tracker-stopped", self.rollout_estimate() + ping):
            self.outage_rollout("tracker-stopped", 4, "tracker", ("opentracker.service",), when_seeded=False)

    def outage_rollout(self, label, stage, host, units, when_seeded):
        """Publish demo content ``stage``, run rollout.yml with ``units`` of booted host ``host`` stopped (``when_seeded``:
        from the first fleet_wait round with a host done, else from the start), start them again, then status.yml and
        the partial-file check. Results in ``self.results["outage"][label]``."""
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "demo", "make_content.py"), self.demo_dir, str(stage)], check=True,
                       env=self.env, stdout=subprocess.DEVNULL)
        self.playbook("publish-" + label, "publish.yml")
        stopped = []
        started = time.monotonic()

        def stop():
            self.systemctl(host, "stop", units)
            stopped.append(time.monotonic() - started)
            say("%s: %s stopped on %s after %.1f s of the rollout" % (label, " ".join(units), host, stopped[0]))

        def watch(log_path):
            if stopped:
                return
            with open(log_path, encoding="utf-8", errors="replace") as handle:
                if any(int(done) > 0 for done in FLEET_DONE_RE.findall(handle.read())):
                    stop()

        try:
            if not when_seeded:
                stop()
            run = self.playbook(label, "rollout.yml", must_pass=False, watch=watch if when_seeded else None)
        finally:
            if stopped:
                self.systemctl(host, "start", units)
        status = self.playbook("status-" + label, "status.yml", must_pass=False)
        converged = self.converged_count("status-" + label)
        partial, unread = self.partial_hosts("partial-" + label)
        self.results.setdefault("outage", {})[label] = {
            "rollout_rc": run.rc, "rollout_s": round(run.wall, 1), "stopped": list(units) if stopped else [], "host": host,
            "stopped_after_s": round(stopped[0], 1) if stopped else None, "status_rc": status.rc, "converged": converged,
            "partial_hosts": partial, "partial_unread": unread}
        say("%s rollout: exit %d, %.1f s, %s stopped %s; status.yml: %d/%d converged; stores with a partial file: %s%s" % (
            label, run.rc, run.wall, " ".join(units), "after %.1f s" % stopped[0] if stopped else "NEVER (no host was done)",
            converged, len(self.hosts), ", ".join(partial) or "none", "; not read: %s" % ", ".join(unread) if unread else ""))

    def systemctl(self, host, action, units):
        """``systemctl <action> <units>`` in booted host ``host``, through its namespaces (fleetctl exec): a moment, not an
        SSH round trip, so that a stop lands before the rollout's next step."""
        argv = [sys.executable, os.path.join(TESTS, "testfleet", "fleetctl.py"), "exec", "--name", FLEET, host, "--",
                "systemctl", action] + list(units)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr)[-2000:]
            raise FleetError("systemctl %s %s on %s failed (exit %d): %s" % (action, " ".join(units), host, proc.returncode, output))

    def partial_hosts(self, label):
        """(hosts whose store holds a file in its download area, .partial/ but its progress.json; hosts not read)."""
        argv = [os.path.join(VENV_BIN, "ansible")] + self.inventories() + [
            "hypervisors", "-o", "-m", "ansible.builtin.find", "-a",
            "paths=%s/.partial recurse=true hidden=true file_type=file excludes=progress.json" % STORE_DIRS[0]]
        run = self.ansible(label, argv, must_pass=False)
        with open(run.log_path, encoding="utf-8", errors="replace") as handle:
            found = dict((host, int(matched)) for host, matched in PARTIAL_RE.findall(handle.read()))
        return sorted(host for host, matched in found.items() if matched), [host for host in self.hosts if host not in found]

    def outage_converged(self, label):
        """K/N: the hosts status.yml found converged after the rollout ``label`` with a part of the site down (na: not run)."""
        outage = (self.results.get("outage") or {}).get(label)
        return "na" if outage is None else "%d/%d" % (outage["converged"], len(self.hosts))

    def converged_count(self, label):
        """Hypervisors status.yml reports as holding exactly their approved, selected images ("<host>: ok (...)")."""
        with open(self.results[label].log_path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        return len(set(re.findall(r"\b(hv\d+): ok \(", text)))

    def report(self, ping, status, noop):
        """Human summary on stderr; the scale: line returned."""
        mem = self.results["memory"]
        n = len(self.hosts)
        change = self.results.get("change")
        transfers = self.results.get("transfers") or {}
        transfer_max = "%.1f" % max(transfers.values()) if transfers else "na"
        converged = self.results["converged"] if change is None else self.results.get("converged_after_change")

        def ratio(run):
            return "%.2f" % (run.wall / ping.wall) if run and ping.wall else "na"

        def wall(run):
            return "%.1f" % run.wall if run else "na"

        for label in ("site-services", "publish", "converge", "converge-rerun", "ping", "status", "noop", "baseline-status", "baseline-noop",
                      "publish-change", "change", "status-after-change"):
            run = self.results.get(label)
            if run:
                say("%-14s %7.1f s wall %7.1f s controller CPU (%.2f CPU-s per host); machine %.0f %% busy, %.0f %% softirq" % (
                    label, run.wall, run.cpu, run.cpu / n, run.machine["busy_pct"], run.machine["softirq_pct"]))
        for label in ("baseline-status", "baseline-noop"):
            if label in self.results:
                say("%s (%s): %.1f s, %s x ping" % (label, self.args.baseline, self.results[label].wall, ratio(self.results[label])))
        for label in ("status", "noop", "change"):
            if label not in self.results:
                continue
            slow = sorted(self.results[label].tasks, key=lambda t: -t["seconds"])[:4]
            say("%s, slowest tasks: %s" % (label, "; ".join("%.1f s %s" % (t["seconds"], t["task"]) for t in slow)))
        with open("/proc/loadavg", encoding="ascii") as handle:
            say("load average: %s; %d CPUs; total %.0f s%s" % (handle.read().strip(), os.cpu_count(), self.results["total_s"],
                                                               "; left out for the budget: " + ", ".join(self.skipped) if self.skipped else ""))
        fields = [
            ("hosts", n), ("ping", wall(ping)), ("status", wall(status)), ("status_ratio", ratio(status)),
            ("noop", wall(noop)), ("noop_ratio", ratio(noop)), ("change", wall(change)), ("transfer_max", transfer_max),
            ("overhead_ratio", "%.2f" % ((change.wall - float(transfer_max)) / ping.wall) if change and transfers and ping.wall else "na"),
            ("converged", "na" if converged is None else "%d/%d" % (converged, n)),
            ("faulty_converged", self.faulty_converged()),
            ("mem_per_host_mb", "%.1f" % (mem["pss_kib_mean"]["total"] / 1024.0)),
            ("repo_stopped_converged", self.outage_converged("repo-stopped")),
            ("tracker_stopped_converged", self.outage_converged("tracker-stopped")),
        ] + ([("left_out", ",".join(self.skipped))] if self.skipped else [])
        summary = dict(fields)
        timed = ("status", "noop", "converge", "change", "baseline-status", "baseline-noop", "status-mitogen", "noop-mitogen",
                 "change-mitogen")
        summary.update({"cpu_s": {label: round(self.results[label].cpu, 1) for label in self.results if isinstance(self.results[label], Run)},
                        "tasks": {label: self.results[label].tasks for label in timed if label in self.results},
                        "transfers": transfers, "converged_before_change": self.results["converged"], "faulty": self.results.get("faulty"),
                        "memory": mem, "light_timings": self.results["light_timings"], "left_out": self.skipped,
                        "machine": {label: self.results[label].machine for label in self.results if isinstance(self.results[label], Run)}})
        summary.update(self.change_timeline_summary())
        summary["outage"] = self.results.get("outage")
        mitogen = self.mitogen_fields()
        summary.update(mitogen)
        with open(os.path.join(WORK, "scale.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1, sort_keys=True)
        if mitogen:
            print("scale-mitogen: hosts=%d %s" % (n, " ".join("%s=%s" % (k, v) for k, v in mitogen)))
        return "scale: " + " ".join("%s=%s" % (k, v) for k, v in fields)

    def faulty_converged(self):
        """K/M: of the M hosts taken off the network in the first rollout, those status.yml finds converged in the end."""
        faulty = self.results.get("faulty")
        label = "status-after-change" if "status-after-change" in self.results else "status"
        if not faulty or label not in self.results:
            return "na"
        with open(self.results[label].log_path, encoding="utf-8", errors="replace") as handle:
            ok = set(re.findall(r"\b(hv\d+): ok \(", handle.read()))
        return "%d/%d" % (len(ok & set(faulty["hosts"])), len(faulty["hosts"]))

    def teardown(self):
        """Stop this run's SSH masters, remove the light hosts and the booted fleet (idempotent)."""
        stop_ssh_masters(CONTROL_DIR)
        if self.light is not None:
            self.light.destroy()
        if self.boot is not None:
            self.boot.destroy()


def stop_ssh_masters(directory, progress=None):
    """Stop the ControlPersist masters whose sockets are in ``directory`` (this harness's own ansible runs) and empty it.

    A master's command line is ``ssh: <socket> [mux]``; it is stopped by its pid (SIGTERM).
    """
    try:
        sockets = set(os.path.join(directory, name) for name in os.listdir(directory))
    except FileNotFoundError:
        sockets = set()
    stopped = 0
    if sockets:
        for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as handle:
                    words = handle.read().decode("utf-8", "replace").split("\0")
            except OSError:
                continue
            if words and words[0].startswith("ssh: ") and words[0][5:].split(" ")[0] in sockets:
                try:
                    os.kill(pid, signal.SIGTERM)
                    stopped += 1
                except ProcessLookupError:
                    pass
        for path in sockets:
            try:
                os.unlink(path)
            except OSError:
                pass
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if progress and stopped:
        progress("stopped %d SSH master(s) of an earlier run" % stopped)
    return stopped


def _read_tasks(path):
    """The scale_timer callback's records (list of dicts), [] when it wrote none."""
    out = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                out.append(json.loads(line))
    except (OSError, ValueError):
        pass
    return out


def main(argv=None):
    """Parse options, run, always clean up."""
    parser = argparse.ArgumentParser(description="vmic.fleet control plane on many light hypervisors (make scale)")
    parser.add_argument("--hosts", type=int, default=int(os.environ.get("HOSTS") or 450))
    parser.add_argument("--batch", type=int, default=25, help="light hosts started at once")
    parser.add_argument("--forks", type=int, default=50, help="Ansible forks")
    parser.add_argument("--playbooks", default=os.path.join(REPO_ROOT, "playbooks"), help="directory of the playbooks run")
    parser.add_argument("--ping-only", action="store_true", help="light hosts, memory and ping only (no repository, no rollout)")
    parser.add_argument("--idle", type=int, default=20, help="seconds over which idle engine CPU is measured")
    parser.add_argument("--baseline", help="another playbook directory whose status.yml and rollout.yml are measured too (before/after)")
    parser.add_argument("--no-change", action="store_true", help="skip the one-change rollout")
    parser.add_argument("--no-outage", action="store_true",
                        help="skip the two rollouts with the repository stopped once every piece is in the swarm, and the tracker stopped")
    parser.add_argument("--faulty", type=float, default=5.0,
                        help="percent of the hosts taken off the network during the first rollout's download (then a re-run completes them)")
    parser.add_argument("--budget", type=int, default=45,
                        help="minutes the whole run may take: the outage rollouts and the mitogen steps that would pass it are left out")
    parser.add_argument("--first-mib", type=int, default=1, help="MiB of each image of the first rollout (the one-change image is 8 MiB)")
    parser.add_argument("--engine-timeout", type=int, default=120,
                        help="vmic_engine.timeout of the light hypervisors (seconds: 450 engines share this machine's cores)")
    parser.add_argument("--mitogen", action="store_true",
                        help="also measure ping, status.yml, the no-op rollout.yml and a second site.yml (repo, tracker) under mitogen_linear")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.hosts > 3000:
        parser.error("--hosts: 1 to 3000")
    if not 1 <= args.first_mib <= 1024 or args.engine_timeout < 1 or args.budget < 1:
        parser.error("--first-mib: 1 to 1024; --engine-timeout and --budget: at least 1")
    lighthost._stop_on_signals()  # pylint: disable=protected-access
    scale = Scale(args)
    try:
        line = scale.run()
    except FleetError as exc:
        say("failed: %s" % exc)
        return 1
    except (KeyboardInterrupt, lighthost.Interrupted) as exc:
        say("interrupted (%s)" % (exc or "Ctrl-C"))
        return 130
    finally:
        say("removing the fleets")
        scale.teardown()
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
