"""Swarm tests: real engines, one per network namespace, on tc-shaped links, with opentracker and a web seed.

Every test in this directory carries the ``swarm`` marker (``-m "not swarm"`` leaves them out).
They need root, iproute2, opentracker and libtorrent; without them the fleet fails with a message
naming what is missing.  Every namespace, process and mount a test creates is removed afterwards,
also when the test fails; leftovers of killed runs are removed at session start.
"""

import os
import subprocess
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from testfleet.netns import cleanup_stale, require_root  # noqa: E402  pylint: disable=wrong-import-position
from testfleet.swarm import Swarm, ensure_collection_path  # noqa: E402  pylint: disable=wrong-import-position
# the one opentracker fixture, shared with tests/engines: opentracker(hashes, host=fleet_host) on a fleet host
from testfleet.tracker import opentracker  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import

ensure_collection_path()

PEERS = 8
RATE_MBIT = 40


def pytest_configure(config):
    config.addinivalue_line("markers", "swarm: multi-host BitTorrent tests in network namespaces (root, slow-ish)")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(pytest.mark.swarm)


@pytest.fixture(scope="session", autouse=True)
def _fleet_preconditions():
    require_root()
    cleanup_stale()
    yield
    cleanup_stale()


@pytest.fixture
def make_swarm(tmp_path):
    """Factory: ``make_swarm(peers=8, **kwargs)`` -> started Swarm; all torn down after the test."""
    made = []

    def factory(peers=PEERS, rate_mbit=RATE_MBIT, **kwargs):
        swarm = Swarm(str(tmp_path / ("swarm%d" % len(made))), peers=peers, rate_mbit=rate_mbit, **kwargs)
        made.append(swarm)
        return swarm.start()

    yield factory
    for swarm in made:
        swarm.teardown()


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: ``tmpfs(size_bytes)`` -> path of a fresh tmpfs mount (unmounted after the test)."""
    mounts = []

    def factory(size, name="tiny"):
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0755" % size, "tmpfs", str(path)], check=True)
        mounts.append(str(path))
        return str(path)

    yield factory
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", path], check=False)
