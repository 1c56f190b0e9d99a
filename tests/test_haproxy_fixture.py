"""The haproxy fixture against real haproxy: round-robin over two backends, and a backend whose
/healthz answers 503 taken out of the rotation by the health checks."""

from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest

from mup.testing.haproxy import Haproxy


class Backend:
    """A tiny HTTP server: ``/healthz`` answers ``health`` (200 or 503), anything else its
    name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body = ((backend.health, b"{}") if self.path == "/healthz"
                                else (200, backend.name.encode()))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # haproxy's health checks hang up early; that is not a failure

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    made = [Backend("one"), Backend("two")]
    yield made
    for backend in made:
        backend.close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_haproxy_balances_and_drops_an_unhealthy_backend(
        make_haproxy: Callable[[list[int]], Haproxy], backends: list[Backend]) -> None:
    proxy = make_haproxy([b.port for b in backends])
    proxy.wait_for_status("r1", "UP")
    proxy.wait_for_status("r2", "UP")
    assert {fetch(proxy.url + "/who") for _ in range(4)} == {"one", "two"}
    backends[0].health = 503
    proxy.wait_for_status("r1", "DOWN")
    assert {fetch(proxy.url + "/who") for _ in range(4)} == {"two"}
    backends[0].health = 200
    proxy.wait_for_status("r1", "UP")
