"""Tests that start real daemons on loopback: the libtorrent engine service, rtorrent and opentracker.

They need opentracker, rtorrent and libtorrent (and root for the tests that run rtorrent as another
user); ``make engines`` runs them.  The tracker comes from the one fixture shared with tests/swarm
(:func:`testfleet.tracker.opentracker`).
"""

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from daemons import EngineProcess, RtorrentProcess
from testfleet.tracker import opentracker  # noqa: F401  pylint: disable=unused-import
from testfleet.waiting import sha512

from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A directory for the daemons of one test module."""
    return str(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def make_image(base, opentracker):  # pylint: disable=redefined-outer-name
    """Factory: ``make_image(size, piece_size)`` -> a random image in ``base/origin`` and its hybrid torrent, which
    announces to a closed opentracker on 127.0.0.1 that tracks it: dict(path, dir, meta, sha512, announce)."""
    tracker = opentracker()

    def make(size, piece_size):
        src = os.path.join(base, "origin")
        os.makedirs(src)
        path = os.path.join(src, "cirros.img")
        with open(path, "wb") as handle:
            handle.write(os.urandom(size))
        meta = make_torrent(path, piece_size=piece_size, trackers=[tracker.announce_url])
        tracker.add([meta.info_hash_v1, meta.info_hash_v2])
        return {"path": path, "dir": src, "meta": meta, "sha512": sha512(path), "announce": tracker.announce_url}

    return make


@pytest.fixture(scope="module")
def torrent_url(base, image):
    """The module's image's .torrent served over HTTP on 127.0.0.1 (a list's vmic:torrent)."""
    served = os.path.join(base, "served")
    os.makedirs(served)
    name = image["meta"].name + ".torrent"
    with open(os.path.join(served, name), "wb") as handle:
        handle.write(image["meta"].data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/%s" % (server.server_address[1], name)
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


@pytest.fixture
def engines(base, request):
    """Factory of engine service processes (not started), all stopped at the end of the test."""
    started = []

    def make(name, ip, **config):
        engine = EngineProcess(os.path.join(base, request.node.name), name, ip, **config)
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.cleanup()


@pytest.fixture
def rtorrents(base, request):
    """Factory of started rtorrent processes, all stopped at the end of the test."""
    started = []

    def make(name, ip, user=None, where=None):
        proc = RtorrentProcess(where or os.path.join(base, request.node.name), name, ip, user=user)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.cleanup()
