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
