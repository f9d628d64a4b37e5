# -*- coding: utf-8 -*-
"""The engine package without a daemon: configuration, byte accounting, protocol framing, the unix-socket
request helper, and the files the engine role copies to a host (tests/engines runs the real daemons)."""

import ast
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import yaml

from ansible_collections.vmic.fleet.plugins.module_utils import engine_service
from ansible_collections.vmic.fleet.plugins.module_utils._engine import accounting
from ansible_collections.vmic.fleet.plugins.module_utils._engine.accounting import PEER, SEED, WEB, attribute
from ansible_collections.vmic.fleet.plugins.module_utils._engine.config import validate_config
from ansible_collections.vmic.fleet.plugins.module_utils._engine.protocol import (
    MAX_REQUEST_BYTES, call, check_fields, request_bool, request_dir, request_key, request_op, serve_lines, unix_request,
)
from ansible_collections.vmic.fleet.plugins.module_utils.engine import LibtorrentEngineClient
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError, LimitError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
PACKAGE = "ansible_collections.vmic.fleet.plugins.module_utils"
ROLE_VARS = os.path.join(ROOT, "roles", "engine", "vars", "main.yml")


# --------------------------------------------------------------------------- configuration


def test_config_is_validated(tmp_path):
    assert validate_config({})["max_download_peers"] == 5
    assert validate_config({"seed_dial_seconds": 0})["seed_dial_seconds"] == 0     # 0: complete torrents never dial
    for raw, reason in [
        ({"bogus": 1}, "unknown keys"),
        ({"socket": "relative.sock"}, "absolute"),
        ({"socket": "/" + "s" * 100}, "longer than 100 bytes"),
        ({"dht": "yes"}, "dht"),
        ({"dht": 1}, "dht must be bool"),
        ({"max_upload_slots": True}, "max_upload_slots must be int"),
        ({"max_upload_slots": 0}, "at least 1"),
        ({"upload_rate_limit": -1}, "out of range"),
        ({"seed_dial_seconds": -1}, "seed_dial_seconds -1 is out of range"),
        ({"upload_rate_limit": 2 ** 31}, "out of range"),
        ({"listen_interfaces": ["0.0.0.0"]}, "host:port"),
        ({"listen_interfaces": []}, "listen_interfaces is empty"),
        ({"dht_bootstrap_nodes": ["a:1,b:2"]}, "host:port"),
        ({"log_level": "LOUD"}, "not DEBUG, INFO, WARNING or ERROR"),
        ([], "not a JSON object"),
    ]:
        with pytest.raises(EngineError, match=reason):
            validate_config(raw)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert engine_service.main(["--config", str(bad)]) == 1
    assert engine_service.main(["--config=%s" % bad]) == 1


@pytest.mark.parametrize("argv", [[], ["--config"], ["--config", ""], ["--config="], ["-c", "x"], ["--config", "a", "b"], ["x.json"]])
def test_bad_command_line_refused_with_usage(argv, capsys):
    assert engine_service.main(argv) == 2
    assert capsys.readouterr().err.startswith("usage: vmic-engine --config FILE")


def test_config_file_errors_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EngineError, match="not valid JSON"):
        engine_service.load_config(str(bad))
    bad.write_text("{}" + " " * 65536)
    with pytest.raises(LimitError, match="larger than the limit of 65536 bytes"):
        engine_service.load_config(str(bad))
    with pytest.raises(EngineError, match="engine config .*missing.json: No such file or directory"):
        engine_service.load_config(str(tmp_path / "missing.json"))


# --------------------------------------------------------------------------- byte accounting


def test_bytes_from_a_seed_count_as_peer_and_seed_bytes():
    counters = {"bytes_from_peers": 0, "bytes_from_seeds": 0, "bytes_from_web_seed": 0, "hashfail_count": 2}
    counters, attributed, totals = attribute(counters, 0, {}, [("10.0.0.1", 6881, SEED, 1000)], 1000, [])
    counters, attributed, totals = attribute(counters, attributed, totals, [("10.0.0.1", 6881, SEED, 2500)], 2500, [])
    assert counters == {"bytes_from_peers": 2500, "bytes_from_seeds": 2500, "bytes_from_web_seed": 0, "hashfail_count": 2}
    assert attributed == 2500 and totals == {("10.0.0.1", 6881, False): (2500, SEED)}


def test_web_seed_and_peer_bytes_kept_apart():
    connections = [("10.0.0.1", 80, WEB, 700), ("10.0.0.2", 6881, PEER, 300)]
    counters, attributed, _totals = attribute({}, 0, {}, connections, 1000, [])
    assert counters == {"bytes_from_web_seed": 700, "bytes_from_peers": 300}
    assert attributed == 1000


def test_new_connection_from_the_same_endpoint_counts_from_zero():
    last = {("10.0.0.1", 6881, False): (5000, PEER)}
    counters, attributed, totals = attribute({"bytes_from_peers": 5000}, 5000, last, [("10.0.0.1", 6881, PEER, 400)], 5400, [])
    assert counters["bytes_from_peers"] == 5400 and attributed == 5400
    assert totals[("10.0.0.1", 6881, False)] == (400, PEER)


def test_bytes_of_a_closed_connection_go_to_its_category():
    last = {("10.0.0.1", 6881, False): (100, SEED), ("10.0.0.2", 6881, False): (50, PEER)}
    assert accounting.disconnected_category(last, "10.0.0.1", 6881) == SEED
    assert accounting.disconnected_category(last, "10.0.0.9", 6881) == PEER      # never sampled
    # 10.0.0.1 sent 60 more bytes before it closed: the torrent total says so, the peer list no longer does
    counters, attributed, totals = attribute({"bytes_from_peers": 150, "bytes_from_seeds": 100}, 150, last,
                                             [("10.0.0.2", 6881, PEER, 50)], 210, [SEED])
    assert counters == {"bytes_from_peers": 210, "bytes_from_seeds": 160}
    assert attributed == 210 and list(totals) == [("10.0.0.2", 6881, False)]
    # without a closed connection the difference stays unattributed (it shows up with the next sample)
    counters, attributed, _totals = attribute({"bytes_from_peers": 150}, 150, last, [], 210, [])
    assert counters == {"bytes_from_peers": 150} and attributed == 150


def test_accounting_leaves_its_inputs_unchanged():
    counters, last, disconnected = {"bytes_from_peers": 1}, {("a", 1, False): (1, PEER)}, [PEER]
    attribute(counters, 1, last, [("a", 1, PEER, 9)], 20, disconnected)
    assert counters == {"bytes_from_peers": 1} and last == {("a", 1, False): (1, PEER)} and disconnected == [PEER]
    assert accounting.credit(counters, SEED, 0) == counters and accounting.credit(counters, SEED, -5) == counters


def test_verified_bytes_count_whole_pieces_and_the_short_last_one():
    # 250 bytes in pieces of 100: pieces 0, 1 (100 each) and 2 (50)
    assert accounting.last_piece(250, 100) == 2
    assert accounting.verified_bytes(250, 100, 0, False, False) == 0
    assert accounting.verified_bytes(250, 100, 2, False, False) == 200
    assert accounting.verified_bytes(250, 100, 2, True, False) == 150
    assert accounting.verified_bytes(250, 100, 3, True, False) == 250
    assert accounting.verified_bytes(250, 100, 1, False, True) == 250      # seeding: everything


def test_status_state_and_completion_time():
    assert accounting.torrent_state("disk full", True, True, True) == "error"
    assert accounting.torrent_state(None, True, True, False) == "checking"
    assert accounting.torrent_state(None, False, True, True) == "paused"
    assert accounting.torrent_state(None, False, False, True) == "seeding"
    assert accounting.torrent_state(None, False, False, False) == "downloading"
    assert accounting.completed_at(None, "seeding", 42.0) == 42.0        # seen seeding before the tick recorded it
    assert accounting.completed_at(None, "downloading", 42.0) is None
    assert accounting.completed_at(7.0, "seeding", 42.0) == 7.0


# --------------------------------------------------------------------------- protocol framing


def _serve_pair(answer, on_crash=None):
    """A socketpair with serve_lines on one end in a thread; returns (client socket, its file, thread)."""
    server, client = socket.socketpair()
    rfile, wfile = server.makefile("rb"), server.makefile("wb")

    def run():
        try:
            serve_lines(rfile, wfile, answer, on_crash)
        finally:
            rfile.close()
            wfile.close()
            server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return client, client.makefile("rb"), thread


def test_requests_on_one_connection_answered_in_order():
    client, replies, thread = _serve_pair(lambda request: {"ok": True, "echo": request["n"]})
    client.sendall(b'{"n": 1}\n{"n": 2}\n')
    assert replies.readline() == b'{"ok":true,"echo":1}\n'
    assert replies.readline() == b'{"ok":true,"echo":2}\n'
    client.shutdown(socket.SHUT_WR)
    thread.join(5)
    assert not thread.is_alive()
    client.close()


@pytest.mark.parametrize("payload, reason", [
    (b"not json\n", "request is not JSON"),
    (b'{"op": "ping", "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}\n', "request larger than %d bytes" % MAX_REQUEST_BYTES),
])
def test_unframed_request_answered_and_connection_closed(payload, reason):
    client, replies, thread = _serve_pair(lambda request: {"ok": True})
    client.sendall(payload + b'{"op": "ping"}\n')
    answer = replies.readline()
    assert reason.encode() in answer and answer.startswith(b'{"ok":false')
    assert replies.readline() == b""           # the rest of the stream is not read as requests
    thread.join(5)
    client.close()


def test_handler_crash_is_an_internal_error_answer():
    crashes = []

    def answer(request):
        raise KeyError("boom")

    client, replies, thread = _serve_pair(answer, lambda request, exc: crashes.append((request, str(exc))))
    client.sendall(b'{"op": "status"}\n')
    assert replies.readline() == b'{"ok":false,"error":"internal error: \'boom\'"}\n'
    assert crashes == [({"op": "status"}, "'boom'")]
    client.close()
    thread.join(5)


def test_request_fields_are_checked(tmp_path):
    for request, reason in [
        ([1, 2], "not a JSON object"),
        ({"op": "explode"}, "unknown op"),
        ({}, "unknown op None"),
    ]:
        with pytest.raises(EngineError, match=reason):
            request_op(request)
    assert request_op({"op": "ping"}) == "ping"
    with pytest.raises(EngineError, match="status: unknown fields extra"):
        check_fields({"op": "status", "extra": 1}, (), ("key",))
    with pytest.raises(EngineError, match="remove: missing fields key"):
        check_fields({"op": "remove"}, ("key",))
    for key in ("ABC", "A" * 40, None, 7):
        with pytest.raises(EngineError, match="not a v1 info-hash"):
            request_key({"op": "status", "key": key})
    assert request_key({"op": "status", "key": "a" * 40}) == "a" * 40
    with pytest.raises(EngineError, match="seed_mode is not a boolean"):
        request_bool({"op": "add", "seed_mode": "yes"}, "seed_mode")
    assert request_bool({"op": "add"}, "seed_mode") is False
    for path, reason in (("relative", "not an absolute path"), ("/a\x00b", "not an absolute path"),
                         (str(tmp_path / "missing"), "not an existing directory")):
        with pytest.raises(EngineError, match=reason):
            request_dir({"op": "move", "dest_dir": path}, "dest_dir")
    assert request_dir({"op": "move", "dest_dir": str(tmp_path) + "/./"}, "dest_dir") == str(tmp_path)


# --------------------------------------------------------------------------- the unix-socket request helper


@pytest.fixture
def fake_server():
    """Factory: ``fake_server(reply)`` -> path of a unix socket whose one connection ``reply(conn)`` serves."""
    sockdir = tempfile.mkdtemp(prefix="vmic-fake-")
    stop = threading.Event()
    started = []

    def make(reply):
        path = os.path.join(sockdir, "fake%d.sock" % len(started))
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)

        def run():
            try:
                conn, _addr = server.accept()
            except OSError:      # closed at teardown: the client never connected
                return
            try:
                conn.recv(65536)
                reply(conn, stop)
            except OSError:
                pass
            finally:
                conn.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.append((server, thread))
        return path

    yield make
    stop.set()
    for server, thread in started:
        thread.join(5)
        server.close()
    shutil.rmtree(sockdir, ignore_errors=True)


def test_slow_engine_answer_refused(fake_server):
    """A socket that answers one byte at a time cannot hold image_sync: the request has a total deadline."""
    def trickle(conn, stop):
        for byte in b'{"ok": true, "torrents": []}' * 100:
            if stop.is_set():
                break
            conn.sendall(bytes([byte]))
            time.sleep(0.1)

    path = fake_server(trickle)
    started = time.monotonic()
    with pytest.raises(EngineError, match="no complete answer to status within 2 s"):
        LibtorrentEngineClient(path, timeout=2).status()
    assert time.monotonic() - started < 4


def test_oversize_and_truncated_answers_refused(fake_server):
    def flood(conn, stop):
        while not stop.is_set():
            conn.sendall(b"x" * 65536)

    path = fake_server(flood)
    with pytest.raises(LimitError, match="test: big: response larger than 100000 bytes"):
        unix_request(path, b"q", 10, 100000, "test", "big", until_newline=True)
    with pytest.raises(LimitError, match="larger than 1000 bytes"):
        unix_request(fake_server(flood), b"q", 10, 1000, "test", "big", header_allowance=1000)
    path = fake_server(lambda conn, stop: conn.sendall(b'{"ok": true'))
    with pytest.raises(EngineError, match="engine .*: status: connection closed before a complete response"):
        LibtorrentEngineClient(path, timeout=5).status()
    assert unix_request(fake_server(lambda conn, stop: conn.sendall(b"whole answer")), b"q", 5, 100, "test", "eof") == b"whole answer"
    with pytest.raises(EngineError, match="test: q failed: No such file or directory"):
        unix_request("/nonexistent/x.sock", b"q", 1, 100, "test", "q")


@pytest.mark.parametrize("reply, reason", [
    (b"not json\n", "status: response is not JSON"),
    (b"[1]\n", "status: malformed response"),
    (b'{"ok": false, "error": "disk on fire"}\n', "status: disk on fire"),
    (b'{"ok": true, "torrents": 3}\n', "status: malformed response"),
])
def test_bad_engine_answers_refused(fake_server, reply, reason):
    path = fake_server(lambda conn, stop: conn.sendall(reply))
    with pytest.raises(EngineError, match="engine %s: %s" % (path, reason)):
        LibtorrentEngineClient(path, timeout=5).status()


def test_oversize_request_refused_before_sending(fake_server):
    path = fake_server(lambda conn, stop: None)
    with pytest.raises(EngineError, match="add request of .* bytes exceeds the limit"):
        call(path, "add", {"torrent": "x" * MAX_REQUEST_BYTES}, 5)


# --------------------------------------------------------------------------- what the engine role installs


def import_closure(module):
    """Files (relative to plugins/module_utils) that importing ``module`` (a dotted name under module_utils) loads.

    Every import of the collection's module_utils counts, also those inside functions (a lazy import is
    still needed on the host); package ``__init__.py`` files are included.
    """
    files = {"__init__.py"}
    seen = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for depth in range(1, len(parts)):
            files.add(os.path.join(*parts[:depth], "__init__.py"))
        relative = os.path.join(*parts)
        path = relative + ".py" if os.path.isfile(os.path.join(MODULE_UTILS, relative + ".py")) else os.path.join(relative, "__init__.py")
        files.add(path)
        with open(os.path.join(MODULE_UTILS, path)) as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, "%s: relative import (the collection imports by absolute name)" % path
                targets = [node.module] + ["%s.%s" % (node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target == PACKAGE or not target.startswith(PACKAGE + "."):
                    continue
                inner = target[len(PACKAGE) + 1:]
                inner_path = os.path.join(MODULE_UTILS, *inner.split("."))
                if os.path.isfile(inner_path + ".py") or os.path.isfile(os.path.join(inner_path, "__init__.py")):
                    todo.append(inner)
    return sorted(files)


def role_vars():
    with open(ROLE_VARS) as handle:
        return yaml.safe_load(handle)


def test_engine_role_installs_exactly_the_import_closure_of_the_service():
    """A module_utils file the service imports and the role does not copy would stop the engine on every host."""
    role = role_vars()
    entry = role["engine_service_module"]
    assert entry.startswith(PACKAGE + ".")
    closure = import_closure(entry[len(PACKAGE) + 1:])
    assert "_engine/service.py" in closure and "torrent.py" in closure and "imagesync.py" not in closure
    assert sorted(role["engine_module_utils_files"]) == closure


def test_files_the_role_installs_run_the_service_alone(tmp_path):
    """The role's files in an empty tree, as on a host: the entry point starts (refusing a bad config) and load_config,
    which the role's config validation calls, is importable from it."""
    role = role_vars()
    target = tmp_path / "install"
    for directory in role["engine_package_dirs"]:
        (target / directory).mkdir(parents=True, exist_ok=True)
        (target / directory / "__init__.py").write_text("")
    module_utils = target / "ansible_collections" / "vmic" / "fleet" / "plugins" / "module_utils"
    for name in role["engine_module_utils_files"]:
        (module_utils / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(MODULE_UTILS, name), str(module_utils / name))
    config = tmp_path / "engine.json"
    config.write_text('{"log_level": "LOUD"}')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(target), "PYTHONDONTWRITEBYTECODE": "1"}
    entry = role["engine_service_module"]
    result = subprocess.run([sys.executable, "-m", entry, "--config", str(config)], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    assert b"engine not started: engine config %s: log_level 'LOUD'" % str(config).encode() in result.stderr
    assert b"Traceback" not in result.stderr
    check = subprocess.run([sys.executable, "-c", "import sys; from %s import load_config; load_config(sys.argv[1])" % entry, os.devnull],
                           cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    assert check.returncode == 1 and b"not valid JSON" in check.stderr
