"""Fetching lists and torrents: total deadline, byte limit, redirect and scheme rules, against real
HTTP(S) servers on 127.0.0.1 (threads in this process, server certificate from the test PKI)."""

import datetime
import ipaddress
import os
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.vmic.fleet.plugins.module_utils.errors import FetchError, LimitError
from ansible_collections.vmic.fleet.plugins.module_utils.fetch import fetch_bytes

BODY = b"signed list bytes\n"
TRICKLE_SECONDS = 12  # the trickle server gives up after this, so that a fetch without a deadline still ends


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def do_GET(self):  # pylint: disable=invalid-name
        self.server.requests.append(self.path)
        route = self.path.split("?", 1)[0]
        if route == "/ok":
            self._answer(200, BODY)
        elif route.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.server.redirects[route[len("/redirect/"):]])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/trickle-body":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self._trickle(b"x" * 1000)
        elif route == "/trickle-headers":
            self._trickle(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"y" * 1000 + b"\r\n\r\n")
        elif route == "/endless":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            block = b"z" * 65536
            try:
                for _block_number in range(2048):  # 128 MiB at most
                    self.wfile.write(block)
            except OSError:
                pass
            self.close_connection = True
        else:
            self._answer(404, b"not found\n")

    def _answer(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, data):
        # One byte every 0.2 s: never idle long enough for a socket timeout to fire.
        end = time.monotonic() + TRICKLE_SECONDS
        try:
            for byte in data:
                if time.monotonic() > end:
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass
        self.close_connection = True


def server_context(pki, directory):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(pki.root.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(pki.root.key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


class Server(object):
    def __init__(self, context=None):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.httpd.redirects = {}
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if context is not None else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path):
        return "%s://127.0.0.1:%d%s" % (self.scheme, self.httpd.server_address[1], path)

    def redirect(self, name, target):
        self.httpd.redirects[name] = target
        return self.url("/redirect/" + name)

    @property
    def requests(self):
        return self.httpd.requests

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Listener(object):
    """A bare TCP port that records whether anything connected (stands in for an FTP server)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                conn, _address = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def stop(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def tls(pki, tmp_path_factory):
    return server_context(pki, str(tmp_path_factory.mktemp("server-cert")))


@pytest.fixture()
def https(tls):
    server = Server(tls)
    yield server
    server.stop()


@pytest.fixture()
def http():
    server = Server()
    yield server
    server.stop()


def test_https_fetch_and_https_redirect_accepted(pki, https):
    assert fetch_bytes(https.url("/ok"), 1024, timeout=5, ca_file=pki.root.cert_path, what="image list") == BODY
    assert fetch_bytes(https.redirect("same", https.url("/ok")), 1024, timeout=5, ca_file=pki.root.cert_path) == BODY


def test_http_fetch_only_where_allowed(http):
    assert fetch_bytes(http.url("/ok"), 1024, timeout=5, allow_http=True) == BODY
    with pytest.raises(FetchError, match="plain HTTP is refused"):
        fetch_bytes(http.url("/ok"), 1024, timeout=5)


@pytest.mark.parametrize("route", ["/trickle-body", "/trickle-headers"])
def test_slow_retrieval_refused(pki, https, route):
    url = https.url(route)
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_bytes(url, 1024 * 1024, timeout=2, ca_file=pki.root.cert_path, what="image list")
    elapsed = time.monotonic() - started
    assert elapsed < 3.5, "the fetch took %.1f s despite a deadline of 2 s" % elapsed
    message = str(caught.value)
    assert url in message and "deadline of 2 s" in message, message


def test_endless_data_refused(pki, https):
    started = time.monotonic()
    with pytest.raises(LimitError, match="limit of 1048576 bytes"):
        fetch_bytes(https.url("/endless"), 1024 * 1024, timeout=10, ca_file=pki.root.cert_path, what="torrent")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1:{port}/list", "data:,forged"])
@pytest.mark.parametrize("source", ["https", "http"])
def test_redirect_to_file_scheme_refused(pki, https, http, source, target):
    ftp = Listener()
    try:
        target = target.format(port=ftp.port)
        server = https if source == "https" else http
        url = server.redirect("away", target)
        with pytest.raises(FetchError) as caught:
            fetch_bytes(url, 1024, timeout=3, ca_file=pki.root.cert_path, allow_http=True, what="image list")
    finally:
        ftp.stop()
    message = str(caught.value)
    assert "redirect" in message and target in message and "refused" in message, message
    assert ftp.connections == 0


@pytest.mark.parametrize("allow_http", [False, True])
def test_redirect_https_to_http_refused(pki, https, http, allow_http):
    url = https.redirect("down", http.url("/ok"))
    with pytest.raises(FetchError, match="leaves HTTPS"):
        fetch_bytes(url, 1024, timeout=3, ca_file=pki.root.cert_path, allow_http=allow_http, what="torrent")
    assert http.requests == []


def test_local_path_torrent_refused(tmp_path):
    path = tmp_path / "x.torrent"
    path.write_bytes(b"d4:infod4:name1:xee")
    assert fetch_bytes(str(path), 1024) == path.read_bytes()  # lists may be local paths
    for src in (str(path), "file://" + str(path)):
        with pytest.raises(FetchError, match="torrent .*(local path is refused|only local paths and https)"):
            fetch_bytes(src, 1024, what="torrent", allow_local=False)


@pytest.mark.parametrize("location", ["https://[::1/x", "https://h\u00e9:99999999/x"])
def test_malformed_redirect_crash_refused(pki, https, location):
    """A hostile Location header is a refusal with the URL named, never a traceback."""
    url = https.redirect("broken", location)
    with pytest.raises(FetchError) as caught:
        fetch_bytes(url, 1024, timeout=3, ca_file=pki.root.cert_path, what="image list")
    assert url in str(caught.value)
