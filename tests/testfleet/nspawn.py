"""Real Debian hosts for the test fleet: systemd-nspawn containers with systemd and sshd, reached over SSH.

One implementation serves the demo fleet, the molecule scenarios and the tests (see docs/testfleet.md).

* :func:`ensure_base_root` makes the shared, read-only Debian root once with ``debootstrap`` (cached
  under ``/var/cache/vmic-testfleet/bookworm-<hash>``, the hash covering suite, packages and layout).
* :class:`NspawnFleet` puts one container per host into the host namespaces of a
  :class:`testfleet.netns.Fleet`: ``systemd-nspawn --boot --register=no --keep-unit
  --network-namespace-path=/run/netns/<ns> --overlay=BASE:UPPER:/ -D BASE``, with a private upper
  directory per host (its SSH host key, machine id, hostname and root's authorized_keys are written
  there before boot).  A controller namespace ``ctl`` on the same bridge is the fleet's only way in:
  SSH connections enter it through a ``ProxyCommand`` (``fleetctl.py proxy``), so Ansible runs from
  the machine's own namespace unchanged while the machine's network is never touched.
* The fleet's state (JSON), inventory, ``ssh_config``, ``known_hosts`` and client key live under
  ``/run/vmic-testfleet/<name>/``; the upper directories under ``/var/lib/vmic-testfleet/<name>/``.
  :func:`cleanup_from_state` removes everything a fleet made, also when its owner died.

Every fleet gets its own /20 of 198.18.0.0/15, so fleets can run side by side and SSH connection
sharing (ControlPath keyed on the address) never mixes two fleets' hosts.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import fcntl
import glob
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from testfleet.netns import BENCH_RANGE, Fleet, FleetError, delete_namespace, list_namespaces, require_root

CACHE_DIR = "/var/cache/vmic-testfleet"
STATE_ROOT = "/run/vmic-testfleet"
DATA_ROOT = "/var/lib/vmic-testfleet"
NETNS_PREFIX = "vmfl"
SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Packages on top of debootstrap's minbase.  rtorrent and opentracker are there for the roles that
# deploy them; python3-apt lets ansible.builtin.apt confirm installed packages without a network;
# python3-cffi-backend provides the virtual packages python3-cryptography depends on, which
# debootstrap's resolver does not follow.
PACKAGES = (
    "ca-certificates", "curl", "dbus", "iproute2", "nginx-light", "openssh-server", "openssl", "opentracker", "procps",
    "python3", "python3-apt", "python3-cffi-backend", "python3-cryptography", "python3-jmespath", "python3-libtorrent",
    "python3-yaml", "rtorrent", "systemd", "systemd-sysv",
)
# Bump when _configure_base changes: a new layout gets a new cache directory.
BASE_LAYOUT = 1
SUBNET_PREFIXLEN = 20
CONTROLLER = "ctl"
RESERVED_NAMES = (CONTROLLER, "sw")
HOST_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
FLEET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
GROUP_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
CLONE_NEWNET = 0x40000000
NSPAWN = "systemd-nspawn"
SSH = "ssh"
SSH_KEYGEN = "ssh-keygen"
# Units that only slow a container's boot or would block on a console.
MASKED_UNITS = (
    "console-getty.service", "getty@.service", "serial-getty@.service", "getty.target",
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "systemd-timesyncd.service", "systemd-networkd-wait-online.service",
)
# Services of packages in the base that the roles start themselves, where and when they need them.
DISABLED_UNITS = ("opentracker.service", "rtorrent.service", "nginx.service")


def _progress_stderr(message):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


def write_text_atomic(path, text, mode=0o644):
    """Write ``text`` to ``path`` through a temporary file in the same directory and rename."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path, limit=4 * 1024 * 1024):
    """Parse a JSON file of at most ``limit`` bytes; FleetError names the file and the reason."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise FleetError("%s: cannot read: %s" % (path, exc.strerror)) from exc
    if len(data) > limit:
        raise FleetError("%s: larger than %d bytes" % (path, limit))
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise FleetError("%s: not valid JSON: %s" % (path, exc)) from exc


# -- mounts and safe removal ------------------------------------------------------------------------

def _mountpoints():
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 4:
                points.append(fields[4].encode().decode("unicode_escape"))
    return points


def mounts_below(path):
    """Mount points at or below ``path`` in this mount namespace."""
    path = os.path.realpath(path)
    return [p for p in _mountpoints() if p == path or p.startswith(path.rstrip("/") + "/")]


def remove_tree(path):
    """Remove a directory tree that must hold no mounts (debootstrap mounts /proc, /sys and maybe
    /dev into its target; a tree still holding them is unmounted first, never deleted through)."""
    if not os.path.lexists(path):
        return
    for point in sorted(mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60, check=False)
    left = mounts_below(path)
    if left:
        raise FleetError("%s: not removed, still mounted below it: %s" % (path, ", ".join(left)))
    shutil.rmtree(path)


# -- the base root --------------------------------------------------------------------------------

def debian_mirror(sources_dir="/etc/apt"):
    """The Debian mirror URL apt is configured with for ``bookworm`` (``VMIC_TESTFLEET_MIRROR`` overrides)."""
    override = os.environ.get("VMIC_TESTFLEET_MIRROR")
    if override:
        return override
    entries = []
    one_line = [os.path.join(sources_dir, "sources.list")] + sorted(glob.glob(os.path.join(sources_dir, "sources.list.d", "*.list")))
    for path in one_line:
        try:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                    if len(words) >= 3 and words[0] == "deb":
                        entries.append((words[1], words[2:3]))
        except OSError:
            continue
    for path in sorted(glob.glob(os.path.join(sources_dir, "sources.list.d", "*.sources"))):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(1024 * 1024)
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                for uri in fields.get("uris", []):
                    entries.append((uri, fields.get("suites", [])))
    for uri, suites in entries:
        if SUITE in suites and uri.startswith(("http://", "https://")):
            return uri
    raise FleetError("no apt source for Debian %s found under %s (set VMIC_TESTFLEET_MIRROR)" % (SUITE, sources_dir))


def base_root_hash():
    """Short hash over suite, package list and configuration layout: the cache key of the base root."""
    text = "suite=%s\nlayout=%d\npackages=%s\n" % (SUITE, BASE_LAYOUT, ",".join(sorted(PACKAGES)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_root_path(cache_dir=CACHE_DIR):
    """Where the base root for the current package list lives (it may not be built yet)."""
    return os.path.join(cache_dir, "%s-%s" % (SUITE, base_root_hash()))


def ensure_base_root(cache_dir=CACHE_DIR, mirror=None, progress=_progress_stderr):
    """Return the base root's path, building it first when it is not in the cache.

    The build runs under a lock (one builder at a time) into ``<path>.tmp``, which is renamed only
    when complete, so an interrupted build never leaves a half-made root behind under the final name.
    """
    path = base_root_path(cache_dir)
    if os.path.isfile(os.path.join(path, "etc", "vmic-testfleet-base")):
        return path
    require_root()
    if shutil.which("debootstrap") is None:
        raise FleetError("base root %s: debootstrap is not installed (apt-get install debootstrap)" % path)
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    with open(os.path.join(cache_dir, ".build.lock"), "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress("base root: another process is building it, waiting (lock %s)" % lock.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(path, "etc", "vmic-testfleet-base")):
            return path
        tmp = path + ".tmp"
        remove_tree(tmp)
        mirror = mirror or debian_mirror()
        log_path = path + ".build.log"
        started = time.monotonic()
        try:
            _debootstrap(tmp, mirror, os.path.join(cache_dir, "debs"), log_path, progress)
            if progress:
                progress("base root: configuring (sshd, units, host keys removed)")
            _configure_base(tmp)
            os.rename(tmp, path)
        except BaseException:
            if progress:
                progress("base root: build failed, removing %s (log: %s)" % (tmp, log_path))
            remove_tree(tmp)
            raise
        if progress:
            progress("base root: ready at %s after %.0f s" % (path, time.monotonic() - started))
    return path


_PER_PACKAGE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [a-z0-9][a-z0-9.+:-]*( \S+|\.\.\.)$")


def _debootstrap(target, mirror, debs, log_path, progress):
    os.makedirs(debs, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", "--components=main", "--keyring=" + KEYRING,
            "--cache-dir=" + debs, "--include=" + ",".join(sorted(PACKAGES)), SUITE, target, mirror]
    if progress:
        progress("base root: debootstrap %s from %s into %s (a few minutes)" % (SUITE, mirror, target))
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive"))
        try:
            tail = _follow_debootstrap(proc, log, progress)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
        if code != 0:
            inner = os.path.join(target, "debootstrap", "debootstrap.log")
            if os.path.isfile(inner):
                with open(inner, encoding="utf-8", errors="replace") as src:
                    log.write("\n---- %s ----\n" % inner)
                    shutil.copyfileobj(src, log)
    if code != 0:
        raise FleetError("base root %s: debootstrap exited %d (full log: %s); last lines:\n%s" % (
            target, code, log_path, "\n".join(tail)))


def _follow_debootstrap(proc, log, progress):
    """Copy debootstrap's output to the log; report steps and every 50th package. Returns the last lines."""
    counts = {}
    tail = []
    for line in proc.stdout:
        log.write(line)
        line = line.rstrip("\n")
        tail = (tail + [line])[-20:]
        match = _PER_PACKAGE.match(line)
        if match:
            verb = match.group(1)
            counts[verb] = counts.get(verb, 0) + 1
            if progress and counts[verb] % 50 == 0:
                progress("base root: %s: %d packages" % (verb.lower(), counts[verb]))
        elif progress and line.startswith(("I: ", "W: ", "E: ")) and not line.startswith("W: See "):
            progress("base root: %s" % line)
    return tail


def _configure_base(root):
    """Configuration shared by every host; per-host files go into the host's upper directory."""
    def put(rel, text, mode=0o644):
        dest = os.path.join(root, rel.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        write_text_atomic(dest, text, mode)

    put("/etc/ssh/sshd_config.d/vmic-testfleet.conf",
        "# vmic.fleet test fleet: root by key only, one host key written per host before boot\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "MaxStartups 100:30:200\n"
        "MaxSessions 50\n")
    # Each host gets its own key in its upper directory; the shared ones must not exist.
    for key in glob.glob(os.path.join(root, "etc", "ssh", "ssh_host_*")):
        os.unlink(key)
    # An empty machine-id would make every host generate its own at boot; the fleet writes one per host.
    put("/etc/machine-id", "")
    put("/etc/hostname", "localhost\n")
    put("/etc/systemd/journald.conf.d/vmic-testfleet.conf",
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\nForwardToConsole=no\n")
    put("/etc/systemd/system.conf.d/vmic-testfleet.conf", "[Manager]\nDefaultTimeoutStopSec=10s\n")
    argv = ["systemctl", "--root=" + root, "mask"] + list(MASKED_UNITS)
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
    argv = ["systemctl", "--root=" + root, "disable"] + list(DISABLED_UNITS)
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
    _check_run(["systemctl", "--root=" + root, "enable", "ssh.service"], "base root %s" % root)
    put("/etc/vmic-testfleet-base", json.dumps({"suite": SUITE, "layout": BASE_LAYOUT, "packages": sorted(PACKAGES),
                                                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


def _check_run(argv, what, timeout=120):
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FleetError("%s: %s timed out after %ss" % (what, argv[0], timeout)) from exc
    if proc.returncode != 0:
        raise FleetError("%s: %s exited %d: %s" % (what, " ".join(argv), proc.returncode, proc.stderr.strip()[-2000:]))
    return proc.stdout


# -- network namespaces from Python ---------------------------------------------------------------

_LIBC = None


def setns_net(ns_path):
    """Move the calling thread into the network namespace at ``ns_path`` (e.g. /run/netns/<ns>)."""
    global _LIBC  # pylint: disable=global-statement
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _LIBC.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise FleetError("network namespace %s: setns failed: %s" % (ns_path, os.strerror(err)))
    finally:
        os.close(fd)


def connect_in_netns(ns_path, addr, port, timeout=5.0):
    """A TCP socket connected to ``addr:port`` from inside the namespace ``ns_path``.

    A short-lived thread enters the namespace and connects; the socket stays in that namespace,
    the calling thread never changes namespace.
    """
    result = {}

    def worker():
        try:
            setns_net(ns_path)
            result["sock"] = socket.create_connection((addr, port), timeout=timeout)
        except (OSError, FleetError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=worker, name="netns-connect", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if "sock" in result:
        return result["sock"]
    raise result.get("error") or OSError(errno.ETIMEDOUT, "connect to %s:%s timed out" % (addr, port))


def ssh_banner(ns_path, addr, port=22, timeout=3.0):
    """The SSH identification line sent by ``addr:port`` (seen from namespace ``ns_path``), or None."""
    try:
        sock = connect_in_netns(ns_path, addr, port, timeout)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        data = sock.recv(256)
    except OSError:
        return None
    finally:
        sock.close()
    line = data.split(b"\n", 1)[0].strip().decode("ascii", "replace")
    return line if line.startswith("SSH-") else None


# -- cgroups ---------------------------------------------------------------------------------------

CGROUP_GROUP = "vmic-testfleet"
# Runs between fork and exec of every nspawn: joins the host's own cgroups, then becomes nspawn
# (same pid).  A separate process, not preexec_fn, because the caller may have threads.
_CGEXEC = (
    "import os, sys\n"
    "n = sys.argv.index('--')\n"
    "for procs in sys.argv[1:n]:\n"
    "    with open(procs, 'w') as handle:\n"
    "        handle.write(str(os.getpid()))\n"
    "os.execvp(sys.argv[n + 1], sys.argv[n + 1:])\n"
)


def _cgroup_mounts():
    """Mount points of the hierarchies nspawn uses: the unified (cgroup2) one and the v1 name=systemd one."""
    mounts = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _sep, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            if tail[0] == "cgroup2":
                mounts.setdefault("", fields[4])
            elif tail[0] == "cgroup" and "name=systemd" in tail[2].split(","):
                mounts.setdefault("name=systemd", fields[4])
    return mounts


def host_cgroups(machine):
    """Cgroup directories for one container, below this process's own cgroup in each hierarchy.

    With ``--keep-unit`` and no systemd on the machine, nspawn puts the container's ``payload`` and
    ``supervisor`` cgroups below the cgroup it was started in; without a cgroup of its own per host,
    every container's systemd would manage the same tree.
    """
    mounts = _cgroup_mounts()
    dirs = []
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            key = "" if parts[0] == "0" and parts[1] == "" else parts[1]
            if key in mounts:
                dirs.append(os.path.join(mounts[key], parts[2].lstrip("/"), CGROUP_GROUP, machine))
    return dirs


def remove_cgroups(dirs):
    """rmdir the cgroup directories (and the empty subtrees nspawn and systemd left); quiet when busy."""
    for top in dirs:
        if not os.path.isdir(top):
            continue
        for root, _subdirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(root)
            except OSError:
                pass
        parent = os.path.dirname(top)
        if os.path.basename(parent) == CGROUP_GROUP:
            try:
                os.rmdir(parent)
            except OSError:
                pass


# -- keys -------------------------------------------------------------------------------------------

def generate_ed25519(path, comment):
    """Create an ed25519 key pair ``path`` (0600) and ``path.pub``; returns the public key line."""
    for old in (path, path + ".pub"):
        if os.path.lexists(old):
            os.unlink(old)
    _check_run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], "key %s" % path)
    os.chmod(path, 0o600)
    with open(path + ".pub", encoding="ascii") as handle:
        return handle.read().strip()


# -- processes ------------------------------------------------------------------------------------

def pid_alive(pid):
    """True if a process with this id exists (zombies count as gone)."""
    try:
        with open("/proc/%d/stat" % int(pid), encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def pid_cmdline(pid):
    """The argv of a running process, [] when it is gone."""
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as handle:
            return [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
    except (OSError, ValueError):
        return []


def _children(pid):
    kids = []
    for task in glob.glob("/proc/%d/task/*/children" % pid):
        try:
            with open(task, encoding="ascii") as handle:
                kids.extend(int(tok) for tok in handle.read().split())
        except OSError:
            continue
    return kids


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def container_init_pid(nspawn_pid):
    """The container's PID 1 (as this machine sees it): the child of nspawn that is pid 1 in its own namespace."""
    for child in _children(nspawn_pid):
        try:
            with open("/proc/%d/status" % child, encoding="utf-8") as handle:
                status = handle.read()
        except OSError:
            continue
        if re.search(r"^NSpid:\s+\d+\s+1$", status, re.M):
            return child
    return None


# -- one container ----------------------------------------------------------------------------------

def tail_file(path, lines):
    """The last ``lines`` lines of a log file (of its last 8 KiB); "" when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_nspawn(machine, argv, console_log):
    """Start the nspawn command line ``argv`` of ``machine`` in the background, in cgroups of its own (moved there
    before it runs, by _CGEXEC), its console appended to ``console_log``. Returns (Popen, cgroup directories)."""
    env = dict(os.environ, SYSTEMD_NSPAWN_LOCK="0", SYSTEMD_LOG_LEVEL="warning")
    cgroups = host_cgroups(machine)
    for path in cgroups:
        os.makedirs(path, exist_ok=True)
    wrapper = [sys.executable, "-I", "-S", "-c", _CGEXEC] + [os.path.join(p, "cgroup.procs") for p in cgroups] + ["--"]
    with open(console_log, "ab") as log:
        proc = subprocess.Popen(wrapper + list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env, start_new_session=True, close_fds=True)
    return proc, cgroups


class Container:
    """One booted host: a systemd-nspawn process in a host namespace of the fleet."""

    def __init__(self, fleet, host, upper_dir, console_log):
        self.fleet = fleet
        self.host = host
        self.name = host.name
        self.addr = host.addr
        self.upper = upper_dir
        self.console_log = console_log
        self.machine = "%s-%s" % (fleet.netns.prefix, host.name)
        self.proc = None
        self.pid = None
        self.host_key_pub = None
        self.cgroups = []

    def prepare(self, base, authorized_key, hosts_text):
        """Write the host's own files into its (new) upper directory."""
        os.makedirs(self.upper, mode=0o755)
        for rel in ("etc", "etc/ssh", "root", "root/.ssh"):
            src = os.path.join(base, rel)
            dst = os.path.join(self.upper, rel)
            os.makedirs(dst, exist_ok=True)
            if os.path.isdir(src):
                info = os.stat(src)
                os.chmod(dst, info.st_mode & 0o7777)
                os.chown(dst, info.st_uid, info.st_gid)
        os.chmod(os.path.join(self.upper, "root", ".ssh"), 0o700)
        write_text_atomic(os.path.join(self.upper, "etc", "hostname"), self.name + "\n")
        write_text_atomic(os.path.join(self.upper, "etc", "machine-id"), secrets.token_hex(16) + "\n", 0o444)
        write_text_atomic(os.path.join(self.upper, "etc", "hosts"), hosts_text)
        write_text_atomic(os.path.join(self.upper, "root", ".ssh", "authorized_keys"), authorized_key + "\n", 0o600)
        key = os.path.join(self.upper, "etc", "ssh", "ssh_host_ed25519_key")
        self.host_key_pub = generate_ed25519(key, "root@%s" % self.name)

    def argv(self, base):
        """The systemd-nspawn command line of this host."""
        return [NSPAWN, "--quiet", "--boot", "--register=no", "--keep-unit",
                "--machine=" + self.machine, "--hostname=" + self.name,
                "--network-namespace-path=" + self.host.netns_path,
                "--overlay=%s:%s:/" % (base, self.upper), "--directory=" + base,
                "--console=read-only", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
                "--kill-signal=SIGRTMIN+3"]

    def start(self, base):
        """Start systemd-nspawn in the background, in cgroups of its own; the console goes to ``console_log``."""
        self.proc, self.cgroups = start_nspawn(self.machine, self.argv(base), self.console_log)
        self.pid = self.proc.pid
        return self.proc

    def running(self):
        """True while the nspawn process runs."""
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def init_pid(self):
        """Process id (in this machine's view) of the container's PID 1, or None."""
        if not self.running():
            return None
        return container_init_pid(self.pid)

    def console_tail(self, lines=15):
        """Last lines of the host's console log (for error messages)."""
        return tail_file(self.console_log, lines)

    def stop(self, timeout=20.0):
        """Clean poweroff (SIGTERM to nspawn, which sends SIGRTMIN+3 to systemd), then SIGKILL."""
        if not self.running():
            return True
        _signal(self.pid, signal.SIGTERM)
        clean = self.wait(timeout)
        if not clean:
            _signal(self.pid, signal.SIGKILL)
            self.wait(5)
        return clean

    def wait(self, timeout):
        """Wait for nspawn to exit; True if it did within ``timeout``."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        return _wait_gone(self.pid, timeout)


# -- the fleet ----------------------------------------------------------------------------------------

def expand_names(spec):
    """``repo,tracker,hv01..hv03`` -> [repo, tracker, hv01, hv02, hv03] (zero padding is kept)."""
    names = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if ".." in item:
            first, last = item.split("..", 1)
            m1 = re.match(r"^(.*?)(\d+)$", first)
            m2 = re.match(r"^(.*?)(\d+)$", last)
            if not m1 or not m2 or m1.group(1) != m2.group(1) or int(m2.group(2)) < int(m1.group(2)):
                raise FleetError("host range %r: expected <prefix><n>..<prefix><m> with n <= m" % item)
            width = len(m1.group(2))
            names.extend("%s%0*d" % (m1.group(1), width, n) for n in range(int(m1.group(2)), int(m2.group(2)) + 1))
        else:
            names.append(item)
    return names


def validate_names(hosts, groups):
    """Raise FleetError for a bad host list or group mapping."""
    if not hosts:
        raise FleetError("test fleet: no hosts given")
    if len(hosts) > 3000:
        raise FleetError("test fleet: %d hosts is more than this machine can boot" % len(hosts))
    seen = set()
    for name in hosts:
        if not HOST_NAME_RE.match(name) or name in RESERVED_NAMES:
            raise FleetError("test fleet: bad host name %r (lower-case letters, digits and '-'; not %s)" % (
                name, " or ".join(RESERVED_NAMES)))
        if name in seen:
            raise FleetError("test fleet: host %r given twice" % name)
        seen.add(name)
    for group, members in groups.items():
        if not GROUP_NAME_RE.match(group) or group in ("all", "ungrouped"):
            raise FleetError("test fleet: bad group name %r" % group)
        for member in members:
            if member not in seen:
                raise FleetError("test fleet: group %s names %r, which is not a host of the fleet" % (group, member))


def state_dir_of(name, state_root=STATE_ROOT):
    """Directory holding the state of fleet ``name``."""
    return os.path.join(state_root, name)


def load_state(name, state_root=STATE_ROOT):
    """The state of fleet ``name`` (dict) or None when there is no such fleet."""
    path = os.path.join(state_dir_of(name, state_root), "state.json")
    if not os.path.exists(path):
        return None
    return read_json(path)


def list_states(state_root=STATE_ROOT):
    """States of all fleets under ``state_root``, sorted by name."""
    states = []
    for path in sorted(glob.glob(os.path.join(state_root, "*", "state.json"))):
        try:
            states.append(read_json(path))
        except FleetError:
            continue
    return states


def owner_alive(state):
    """True while the process that owns the fleet (supervisor or test process) is running."""
    pid = state.get("owner_pid")
    return bool(pid) and pid_alive(pid) and str(state.get("owner_start")) == str(_start_time(pid))


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % int(pid), encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def _allocate_subnet(state_root, wanted=None):
    used = set()
    for state in list_states(state_root):
        if state.get("subnet"):
            used.add(ipaddress.ip_network(state["subnet"]))
    if wanted:
        net = ipaddress.ip_network(wanted)
        if not net.subnet_of(BENCH_RANGE):
            raise FleetError("test fleet: subnet %s is outside %s" % (net, BENCH_RANGE))
        if any(net.overlaps(u) for u in used):
            raise FleetError("test fleet: subnet %s overlaps a fleet that exists (fleetctl list)" % net)
        return net
    for net in BENCH_RANGE.subnets(new_prefix=SUBNET_PREFIXLEN):
        if not any(net.overlaps(u) for u in used):
            return net
    raise FleetError("test fleet: every /%d of %s is in use" % (SUBNET_PREFIXLEN, BENCH_RANGE))


def cleanup_from_state(state, progress=None, stop_timeout=20.0):
    """Remove what the fleet of ``state`` made, whether or not its owner still runs. Idempotent.

    Stops the nspawn processes (only those whose command line still names the fleet's machine),
    deletes the namespaces (killing what is left in them), nspawn's per-machine directories,
    the upper directories and the state directory.
    """
    containers = state.get("hosts", [])
    stopping = []
    for host in containers:
        pid = host.get("nspawn_pid")
        if pid and ("--machine=" + host.get("machine", "")) in pid_cmdline(pid):
            _signal(pid, signal.SIGTERM)
            stopping.append(pid)
    deadline = time.monotonic() + stop_timeout
    for pid in stopping:
        if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    existing = set(list_namespaces())
    for ns in list(reversed(state.get("namespaces", []))):
        if ns in existing:
            delete_namespace(ns)
    for host in containers:
        remove_cgroups(host.get("cgroups", []))
        for leftover in ("/run/systemd/nspawn/propagate/%s" % host.get("machine", ""),
                         "/run/systemd/nspawn/unix-export/%s" % host.get("machine", "")):
            if host.get("machine") and os.path.isdir(leftover):
                remove_tree(leftover)
    for path in (state.get("data_dir"), state.get("state_dir")):
        if path and os.path.isdir(path):
            remove_tree(path)
    if progress:
        progress("fleet %s: removed" % state.get("name"))


class FleetArtefacts(abc.ABC):
    """The files a fleet writes in its ``state_dir`` for SSH and Ansible, its hosts by name, and its use as a
    context manager (``create`` on enter, ``destroy`` on exit). Shared by the booted fleet and the light fleet."""

    what = "test fleet"

    def __init__(self, name, state_dir, data_dir, progress):
        self.name = name
        self.state_dir = state_dir
        self.data_dir = data_dir
        self.progress = progress or (lambda message: None)
        self.by_name = {}
        self.timings = {}
        self._destroyed = False

    def host(self, name):
        """The host (a Container, a LightHost) named ``name``."""
        try:
            return self.by_name[name]
        except KeyError:
            raise FleetError("%s %s: no host %r" % (self.what, self.name, name)) from None

    def connection_vars(self, indent):
        """The inventory lines (at ``indent``) that make Ansible log in as root with the fleet's key and ssh config."""
        return [indent + line for line in ("ansible_user: root", "ansible_python_interpreter: /usr/bin/python3",
                                           "ansible_ssh_private_key_file: %s" % json.dumps(self.key_path),
                                           "ansible_ssh_common_args: %s" % json.dumps("-F %s" % self.ssh_config_path))]

    @property
    def key_path(self):
        """Private key of the fleet (root login on every host)."""
        return os.path.join(self.state_dir, "id_ed25519")

    @property
    def inventory_path(self):
        """Ansible inventory (YAML) of the fleet."""
        return os.path.join(self.state_dir, "inventory.yml")

    @property
    def ssh_config_path(self):
        """OpenSSH client configuration: ``ssh -F <this> <host>``."""
        return os.path.join(self.state_dir, "ssh_config")

    @property
    def known_hosts_path(self):
        """Host keys of every host, by name and address."""
        return os.path.join(self.state_dir, "known_hosts")

    @property
    def state_path(self):
        """The fleet's state (JSON)."""
        return os.path.join(self.state_dir, "state.json")

    # The interface each fleet class implements (NspawnFleet, lighthost.LightFleet); the context manager calls it.
    @abc.abstractmethod
    def create(self):
        """Start the fleet."""

    @abc.abstractmethod
    def destroy(self):
        """Stop the fleet and remove what it made."""

    def __enter__(self):
        self.create()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.destroy()
        return False


class NspawnFleet(FleetArtefacts):
    """A named fleet of booted Debian hosts; a context manager (``with NspawnFleet(...) as fleet``).

    ``hosts`` is a list of names, ``groups`` maps an inventory group to member names. ``create()``
    boots everything and returns when every host accepts SSH logins with the fleet's key;
    ``destroy()`` removes everything (idempotent; also registered by the underlying netns Fleet).
    """

    def __init__(self, name, hosts, groups=None, rate_mbit=None, subnet=None, cache_dir=CACHE_DIR,
                 state_root=STATE_ROOT, data_root=DATA_ROOT, progress=_progress_stderr, boot_timeout=None,
                 supervised=False):
        if not FLEET_NAME_RE.match(name or ""):
            raise FleetError("test fleet: bad fleet name %r (lower-case letters, digits, '-', '_')" % name)
        super().__init__(name, state_dir_of(name, state_root), os.path.join(data_root, name), progress)
        self.host_names = list(hosts)
        self.groups = dict((g, list(m)) for g, m in (groups or {}).items())
        validate_names(self.host_names, self.groups)
        self.rate_mbit = rate_mbit
        self.wanted_subnet = subnet
        self.cache_dir = cache_dir
        self.state_root = state_root
        self.boot_timeout = boot_timeout or (60.0 + 3.0 * len(self.host_names))
        self.supervised = supervised
        self.base = None
        self.netns = None
        self.controller = None
        self.containers = []
        self.subnet = None
        self.status = "new"

    # -- life cycle ------------------------------------------------------------------------------

    def create(self):
        """Build the base root if needed, boot every host, wait for SSH, write state and inventory."""
        require_root()
        for tool in (NSPAWN, SSH, SSH_KEYGEN):
            if shutil.which(tool) is None:
                raise FleetError("test fleet %s: %s is not installed" % (self.name, tool))
        started = time.monotonic()
        self.base = ensure_base_root(self.cache_dir, progress=self.progress)
        self.timings["base_s"] = round(time.monotonic() - started, 2)
        os.makedirs(self.state_root, mode=0o755, exist_ok=True)
        with open(os.path.join(self.state_root, ".lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = load_state(self.name, self.state_root)
            if old is not None:
                if owner_alive(old):
                    raise FleetError("test fleet %s exists (owner pid %s); destroy it first" % (self.name, old.get("owner_pid")))
                self.progress("fleet %s: removing the remains of an earlier run" % self.name)
                cleanup_from_state(old)
            if os.path.isdir(self.data_dir):
                remove_tree(self.data_dir)
            if os.path.isdir(self.state_dir):
                remove_tree(self.state_dir)
            self.subnet = _allocate_subnet(self.state_root, self.wanted_subnet)
            os.makedirs(self.state_dir, mode=0o700)
            os.makedirs(os.path.join(self.state_dir, "console"), mode=0o700)
            os.makedirs(self.data_dir, mode=0o700)
            self.status = "starting"
            self._write_state()
        try:
            self._boot()
        except BaseException as exc:
            self.status = "failed"
            self.progress("fleet %s: failed: %s" % (self.name, exc))
            self.destroy()
            raise
        self.timings["create_s"] = round(time.monotonic() - started, 2)
        self.status = "ready"
        self._write_state()
        return self

    def _boot(self):
        t0 = time.monotonic()
        self.netns = Fleet(0, prefix=NETNS_PREFIX, subnet=str(self.subnet))
        self.netns.setup()
        hosts = [self.netns.add_host(name, rate_mbit=self.rate_mbit) for name in self.host_names]
        self.controller = self.netns.add_host(CONTROLLER)
        self._write_state()
        pub = generate_ed25519(self.key_path, "vmic-testfleet-%s" % self.name)
        hosts_text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
            "%s\t%s\n" % (h.addr, h.name) for h in hosts + [self.controller])
        for host in hosts:
            box = Container(self, host, os.path.join(self.data_dir, host.name, "upper"),
                            os.path.join(self.state_dir, "console", host.name + ".log"))
            os.makedirs(os.path.dirname(box.upper), mode=0o700)
            box.prepare(self.base, pub, hosts_text)
            self.containers.append(box)
            self.by_name[host.name] = box
        self._write_ssh_files()
        self.timings["network_s"] = round(time.monotonic() - t0, 2)
        self.progress("fleet %s: booting %d hosts in %s" % (self.name, len(hosts), self.subnet))
        t1 = time.monotonic()
        for box in self.containers:
            box.start(self.base)
        self._write_state()
        self._wait_sshd(t1)
        self.timings["boot_s"] = round(time.monotonic() - t1, 2)
        self._write_inventory()
        self._check_logins()
        self.timings["ready_s"] = round(time.monotonic() - t1, 2)
        self.progress("fleet %s: %d hosts answer SSH after %.1f s" % (self.name, len(hosts), self.timings["ready_s"]))

    def _wait_sshd(self, since):
        waiting = list(self.containers)
        deadline = since + self.boot_timeout
        last_note = time.monotonic()
        while waiting:
            for box in list(waiting):
                if not box.running():
                    raise FleetError("host %s: systemd-nspawn exited with %s during boot; console:\n%s" % (
                        box.name, box.proc.poll() if box.proc else "?", box.console_tail()))
                if ssh_banner(self.controller.netns_path, box.addr, timeout=1.0):
                    waiting.remove(box)
            if not waiting:
                break
            now = time.monotonic()
            if now > deadline:
                box = waiting[0]
                raise FleetError("host %s (%s): sshd did not answer within %.0f s; console:\n%s" % (
                    box.name, box.addr, self.boot_timeout, box.console_tail()))
            if now - last_note > 10:
                self.progress("fleet %s: waiting for sshd on %d hosts (%s)" % (
                    self.name, len(waiting), ", ".join(b.name for b in waiting[:8])))
                last_note = now
            time.sleep(0.25)

    def _check_logins(self):
        procs = [(box, subprocess.Popen(self.ssh_argv(box.name, ["true"]), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                 for box in self.containers]
        errors = []
        for box, proc in procs:
            try:
                err = proc.communicate(timeout=60)[1]
            except subprocess.TimeoutExpired:
                proc.kill()
                err = proc.communicate()[1]
            if proc.returncode != 0:
                errors.append("host %s: ssh login failed (exit %d): %s" % (
                    box.name, proc.returncode, err.decode("utf-8", "replace").strip()[-500:]))
        if errors:
            raise FleetError("\n".join(errors))

    def destroy(self, stop_timeout=20.0):
        """Power every host off, delete namespaces, upper and state directories. Idempotent."""
        if self._destroyed or self.subnet is None:
            # Never destroyed twice; nothing to do when create() stopped before the fleet was
            # registered (for example because another fleet of the same name is alive).
            return
        self._destroyed = True
        for box in self.containers:
            if box.running():
                _signal(box.pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout
        for box in self.containers:
            if not box.wait(max(0.1, deadline - time.monotonic())):
                _signal(box.pid, signal.SIGKILL)
                box.wait(5)
        if self.netns is not None:
            self.netns.teardown()
        cleanup_from_state(self._state(), stop_timeout=stop_timeout)
        self.status = "destroyed"

    # -- access ----------------------------------------------------------------------------------

    def ssh_argv(self, name, argv):
        """``ssh`` command line running ``argv`` on host ``name`` (the remote side gets it shell-quoted)."""
        return ssh_command(self.ssh_config_path, name, argv)

    def run(self, name, argv, timeout=120, check=True):
        """Run ``argv`` on host ``name`` over SSH; returns CompletedProcess (text)."""
        proc = subprocess.run(self.ssh_argv(name, argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise FleetError("host %s: %s exited %d: %s" % (name, " ".join(argv), proc.returncode, proc.stderr.strip()[-2000:]))
        return proc

    # -- files -----------------------------------------------------------------------------------

    def _state(self):
        hosts = []
        for box in self.containers:
            hosts.append({"name": box.name, "addr": box.addr, "ns": box.host.ns, "machine": box.machine,
                          "nspawn_pid": box.pid, "upper": box.upper, "console_log": box.console_log,
                          "cgroups": box.cgroups})
        namespaces = [self.netns.switch_ns] + [h.ns for h in self.netns.hosts] if self.netns is not None else []
        return {
            "name": self.name, "status": self.status, "owner_pid": os.getpid(), "owner_start": _start_time(os.getpid()),
            "supervised": self.supervised, "subnet": str(self.subnet) if self.subnet else None,
            "base_root": self.base, "state_dir": self.state_dir, "data_dir": self.data_dir,
            "prefix": self.netns.prefix if self.netns is not None else None,
            "switch_ns": self.netns.switch_ns if self.netns is not None else None,
            "controller": {"ns": self.controller.ns, "addr": self.controller.addr,
                           "netns_path": self.controller.netns_path} if self.controller else None,
            "namespaces": namespaces, "hosts": hosts, "groups": self.groups, "rate_mbit": self.rate_mbit,
            "inventory": self.inventory_path, "ssh_config": self.ssh_config_path, "known_hosts": self.known_hosts_path,
            "private_key": self.key_path, "timings": self.timings,
        }

    def _write_state(self):
        if os.path.isdir(self.state_dir):
            write_text_atomic(self.state_path, json.dumps(self._state(), indent=1, sort_keys=True) + "\n", 0o644)

    def _write_ssh_files(self):
        known = "".join("%s,%s %s\n" % (box.addr, box.name, " ".join(box.host_key_pub.split()[:2]))
                        for box in self.containers)
        write_text_atomic(self.known_hosts_path, known)
        fleetctl = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fleetctl.py")
        # -I -B: no user site, no PYTHON* variables, no .pyc writes; the relay starts once per SSH connection.
        proxy = "%s -I -B %s proxy --netns %s %%h %%p" % (sys.executable, fleetctl, self.controller.netns_path)
        lines = ["# test fleet %s: ssh -F %s <host>" % (self.name, self.ssh_config_path)]
        for box in self.containers:
            lines += ["Host %s" % box.name, "    HostName %s" % box.addr]
        lines += [
            "Host *",
            "    User root",
            "    IdentityFile %s" % self.key_path,
            "    IdentitiesOnly yes",
            "    UserKnownHostsFile %s" % self.known_hosts_path,
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    CheckHostIP no",
            "    BatchMode yes",
            "    ConnectTimeout 20",
            "    LogLevel ERROR",
            "    ProxyCommand %s" % proxy,
        ]
        write_text_atomic(self.ssh_config_path, "\n".join(lines) + "\n")

    def _write_inventory(self):
        q = json.dumps
        lines = ["# Ansible inventory of test fleet %s (fleetctl); removed with the fleet." % self.name,
                 "all:", "  vars:"] + self.connection_vars("    ") + ["  hosts:"]
        for box in self.containers:
            lines.append("    %s:" % box.name)
            lines.append("      ansible_host: %s" % q(box.addr))
        if self.groups:
            lines.append("  children:")
            for group in sorted(self.groups):
                lines.append("    %s:" % group)
                lines.append("      hosts:")
                for member in self.groups[group]:
                    lines.append("        %s: {}" % member)
        write_text_atomic(self.inventory_path, "\n".join(lines) + "\n")


def ssh_command(ssh_config, name, argv):
    """``ssh -F <config> <name> -- <quoted argv>`` (argv is quoted for the remote shell)."""
    import shlex  # pylint: disable=import-outside-toplevel
    return [SSH, "-F", ssh_config, name, "--", shlex.join([str(a) for a in argv])]


def fleet_memory_kib(state):
    """Resident memory of each host (Pss of its nspawn and of every process in its namespace), in KiB."""
    from testfleet.netns import namespace_pids  # pylint: disable=import-outside-toplevel
    result = {}
    for host in state.get("hosts", []):
        total = 0
        pids = namespace_pids(host["ns"])
        if host.get("nspawn_pid") and ("--machine=" + host.get("machine", "")) in pid_cmdline(host["nspawn_pid"]):
            pids.append(host["nspawn_pid"])
        for pid in pids:
            try:
                with open("/proc/%d/smaps_rollup" % pid, encoding="utf-8") as handle:
                    for line in handle:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
            except OSError:
                continue
        result[host["name"]] = total
    return result
