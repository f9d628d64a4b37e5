"""Small helpers shared by the engine tests and the fleet harness: free ports, polling with a deadline, file digests."""

import hashlib
import socket
import time


def free_port(ip):
    """A TCP port free on ``ip`` right now."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind((ip, 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def wait_for(what, predicate, timeout=30.0, interval=0.2):
    """Poll ``predicate`` until it returns something true; AssertionError naming ``what`` at the deadline."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(interval)


def sha512(path):
    """Hex sha512 of a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def machine_jiffies():
    """(busy, total, softirq) jiffies of the whole machine so far, from /proc/stat (idle and iowait are not busy)."""
    with open("/proc/stat", "r", encoding="ascii") as handle:
        values = [int(value) for value in handle.readline().split()[1:]]
    total = sum(values[:8])
    return total - values[3] - values[4], total, values[6]
