# -*- coding: utf-8 -*-
"""The rtorrent engine client without rtorrent: SCGI framing, malformed and missing answers, fast-resume data
(tests/engines runs it against real rtorrent processes)."""

import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils import torrent as torrent_module
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.rtorrent_engine import RtorrentEngineClient, ScgiTransport, with_fast_resume
from ansible_collections.vmic.fleet.plugins.module_utils.torrent import make_torrent

PIECE = 64 * 1024


def test_fast_resume_keeps_the_info_dictionary(tmp_path):
    path = tmp_path / "cirros.img"
    path.write_bytes(os.urandom(3 * PIECE + 4321))
    meta = make_torrent(str(path), piece_size=PIECE, trackers=["http://127.0.0.1:6969/announce"])
    data = with_fast_resume(meta, str(path))
    again = torrent_module.parse_torrent(data)
    assert (again.info_hash_v1, again.info_hash_v2, again.trackers) == (meta.info_hash_v1, meta.info_hash_v2, meta.trackers)
    resume = torrent_module.bdecode(data)[b"libtorrent_resume"]
    chunks = (meta.size + meta.piece_size - 1) // meta.piece_size
    assert resume == {b"bitfield": chunks, b"files": [{b"completed": chunks, b"mtime": int(os.stat(str(path)).st_mtime), b"priority": 1}]}
    path.write_bytes(b"short")
    with pytest.raises(EngineError, match="holds 5 bytes, the torrent says %d" % meta.size):
        with_fast_resume(meta, str(path))


def test_silent_socket_times_out():
    sockdir = tempfile.mkdtemp(prefix="vmic-rt-")
    path = os.path.join(sockdir, "silent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()))
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(EngineError, match="no complete answer"):
            RtorrentEngineClient(path, timeout=1).call("system.client_version")
        assert time.monotonic() - started < 5
    finally:
        thread.join(5)
        for conn, _addr in accepted:
            conn.close()
        server.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_scgi_framing_and_malformed_responses():
    framed = ScgiTransport.frame(b"<x/>")
    length, rest = framed.split(b":", 1)
    assert rest[int(length):int(length) + 1] == b","
    assert rest.startswith(b"CONTENT_LENGTH\x004\x00SCGI\x001\x00") and framed.endswith(b",<x/>")
    transport = ScgiTransport("/nonexistent")
    assert transport.parse_response(b"Status: 200 OK\r\nContent-Length: 3\r\n\r\nabc", "m") == b"abc"
    with pytest.raises(EngineError, match="SCGI status 500"):
        transport.parse_response(b"Status: 500 Internal\r\n\r\n", "m")
    with pytest.raises(EngineError, match="Content-Length says 9"):
        transport.parse_response(b"Content-Length: 9\r\n\r\nabc", "m")
    with pytest.raises(EngineError, match="no SCGI response header"):
        transport.parse_response(b"garbage", "m")
    with pytest.raises(EngineError, match="failed"):
        RtorrentEngineClient("/nonexistent/rpc.sock", timeout=1).ping()
