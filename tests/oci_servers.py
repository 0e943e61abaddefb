"""Real servers for the registry tests: Debian's docker-registry (optionally with htpasswd auth),
and a small proxy in front of it that behaves like hosted registries do: blob downloads
redirected to a CDN on another host, and no `/v2/_catalog`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from processes import stop

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def registry(root: Path, *, host: str = "127.0.0.1", htpasswd: dict[str, str] | None = None):
    """Serve docker-registry on host:free port; yields its http base URL."""
    if not Path(REGISTRY_BIN).is_file():
        pytest.skip(f"{REGISTRY_BIN} not found: install Debian's docker-registry package "
                    f"(scripts/install-services.sh) to run the OCI registry tests")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    auth = ""
    if htpasswd:
        bcrypt = pytest.importorskip("bcrypt")
        lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}" for u, p in htpasswd.items()]
        (root / "htpasswd").write_text("\n".join(lines) + "\n")
        auth = f"auth:\n  htpasswd: {{realm: countrytune-test, path: {root / 'htpasswd'}}}\n"
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n"
                      f"  filesystem: {{rootdirectory: {root / 'storage'}}}\n  delete: {{enabled: true}}\n"
                      f"{auth}http:\n  addr: {host}:{port}\n")
    log = (root / "registry.log").open("w")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{base}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, asking for credentials
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {(root / 'registry.log').read_text()}")
                time.sleep(0.1)
        yield base
    finally:
        stop(proc)
        log.close()


class _Server:
    def __init__(self, host: str, handler) -> None:
        self.httpd = ThreadingHTTPServer((host, free_port(host)), handler)
        self.base = f"http://{host}:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@contextmanager
def hosted_registry_front(upstream: str, upstream_auth: str | None):
    """A proxy to `upstream` (on 127.0.0.1) that hides the catalog and redirects every blob
    download to a CDN on another host (127.0.0.2), as GHCR and S3-backed registries do.
    Yields (proxy base URL, list of the Authorization headers the CDN received)."""
    cdn_saw: list[str | None] = []

    class Cdn(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            cdn_saw.append(self.headers.get("Authorization"))
            req = urllib.request.Request(upstream + self.path,
                                         headers={"Authorization": upstream_auth} if upstream_auth else {})
            with urllib.request.urlopen(req) as r:
                body = r.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    cdn = _Server("127.0.0.2", Cdn)

    class Front(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _relay(self):
            if self.path.startswith("/v2/_catalog"):
                self._answer(404, {}, b'{"errors":[{"code":"UNSUPPORTED","message":"catalog disabled"}]}')
                return
            if self.command == "GET" and "/blobs/sha256:" in self.path:
                self._answer(307, {"Location": cdn.base + self.path}, b"")
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            req = urllib.request.Request(upstream + self.path, data=body, headers=headers, method=self.command)
            try:
                resp = urllib.request.urlopen(req)
            except urllib.error.HTTPError as e:
                resp = e
            with resp:
                data = resp.read()
                self._answer(resp.status, {k: v for k, v in resp.headers.items()
                                           if k.lower() not in HOP_HEADERS}, data)

        def _answer(self, status: int, headers: dict, body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() == "location" and v.startswith(upstream):
                    v = front.base + v[len(upstream):]
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _relay

    front = _Server("127.0.0.1", Front)
    try:
        yield front.base, cdn_saw
    finally:
        front.close()
        cdn.close()


@contextmanager
def cross_host_front(upstream: str, upstream_auth: str | None):
    """A proxy to `upstream` that hands back URLs on another host (127.0.0.2), as a registry
    behind a load balancer or with a separate upload service might: every upload's `Location`
    and every catalog page's `Link` (the catalog is served one repository per page, so there is
    a next page). The other host relays to upstream with its own credentials. Yields (proxy
    base URL, list of the Authorization headers the other host received)."""
    other_saw: list[str | None] = []

    def relay(handler, target: str, auth: str | None) -> tuple[int, dict, bytes]:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS | {"authorization"}}
        if auth:
            headers["Authorization"] = auth
        req = urllib.request.Request(target, data=body, headers=headers, method=handler.command)
        try:
            resp = urllib.request.urlopen(req)
        except urllib.error.HTTPError as e:
            resp = e
        with resp:
            return resp.status, {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}, resp.read()

    def answer(handler, status: int, headers: dict, body: bytes) -> None:
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    class Other(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _relay(self):
            other_saw.append(self.headers.get("Authorization"))
            status, headers, body = relay(self, upstream + self.path, upstream_auth)
            answer(self, status, rewrite(headers), body)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _relay

    other = _Server("127.0.0.2", Other)

    def rewrite(headers: dict) -> dict:
        out = dict(headers)
        for k, v in headers.items():
            if k.lower() == "location" and "/blobs/uploads/" in v:
                path = v[len(upstream):] if v.startswith(upstream) else v
                out[k] = other.base + path
            elif k.lower() == "link":
                out[k] = v.replace("<", "<" + other.base, 1) if v.startswith("</") else v
        return out

    class Front(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _relay(self):
            path = self.path.replace("n=1000", "n=1") if self.path.startswith("/v2/_catalog") else self.path
            status, headers, body = relay(self, upstream + path, self.headers.get("Authorization"))
            answer(self, status, rewrite(headers), body)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _relay

    front = _Server("127.0.0.1", Front)
    try:
        yield front.base, other_saw
    finally:
        front.close()
        other.close()


def non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback (where plain http can be overheard)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address
