"""A local HTTP server on 127.0.0.1 that plays the upstream price source, faults included.

It runs in a thread over real TCP, so the refresh code talks to it exactly as to the internet.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final, Literal

Mode = Literal[
    "ok",  # serve the body with ETag and Last-Modified; 304 when If-None-Match matches
    "status",  # answer `status` with a short text body
    "reset",  # accept, then reset the connection without answering
    "drip",  # send the headers, then one byte every `drip_interval` seconds
    "truncated",  # declare the full length, send half of the body, close
    "endless",  # chunked body that never ends (until the client gives up)
    "redirect",  # 302 to `location`; a request for `location` itself (a path) as in "ok"
    "loop",  # 302 to the same path, for ever
]


#: How often the serving thread looks for `stop()`: `shutdown()` waits up to this long, and at
#: serve_forever()'s default of 0.5 s that was half a second at the end of every test.
SHUTDOWN_POLL_S: Final = 0.05


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, and no access line on stderr per request."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None


@dataclass
class LocalServer:
    """A threaded HTTP server on 127.0.0.1 over real TCP; a subclass says how it answers."""

    _server: ThreadingHTTPServer | None = field(default=None, kw_only=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/model_prices_and_context_window.json"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class Upstream(LocalServer):
    body: bytes = b"{}"
    mode: Mode = "ok"
    status: int = 500
    content_type: str = "application/json"
    failures_before_ok: int = 0  # with mode "status"/"reset": that many faults, then "ok"
    delay: float = 0.0  # seconds to wait before answering
    drip_interval: float = 1.0
    conditional: bool = True  # answer 304 to a matching If-None-Match
    location: str = ""  # where mode "redirect" sends the client
    content_encoding: str = ""  # the Content-Encoding "ok" says its body has, if any
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    def serve(self, body: bytes, *, mode: Mode = "ok") -> None:
        self.body = body
        self.mode = mode

    def handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                upstream.requests.append(dict(self.headers.items()))
                if upstream.delay:
                    time.sleep(upstream.delay)
                mode = upstream.mode
                if mode in ("status", "reset") and upstream.failures_before_ok:
                    failures = sum(1 for _ in upstream.requests)
                    if failures > upstream.failures_before_ok:
                        mode = "ok"
                if mode == "ok":
                    self._ok()
                elif mode == "status":
                    payload = b"upstream is sad"
                    self.send_response(upstream.status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                elif mode == "reset":
                    # linger 0 makes close() send RST; the buffered files hold the socket open
                    # until they are closed too.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.rfile.close()
                    self.wfile.close()
                    self.connection.close()
                    self.close_connection = True
                elif mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", upstream.content_type)
                    self.send_header("Content-Length", str(len(upstream.body)))
                    self.end_headers()
                    for byte in upstream.body[:200]:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(upstream.drip_interval)
                elif mode == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", upstream.content_type)
                    self.send_header("Content-Length", str(len(upstream.body)))
                    self.end_headers()
                    self.wfile.write(upstream.body[: len(upstream.body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif mode == "redirect" and self.path == upstream.location:
                    self._ok()
                elif mode in ("redirect", "loop"):
                    self.send_response(302)
                    self.send_header(
                        "Location", upstream.location if mode == "redirect" else self.path
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif mode == "endless":
                    self.send_response(200)
                    self.send_header("Content-Type", upstream.content_type)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"[" + b"0," * 32767 + b"0"
                    try:
                        while True:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    except OSError:
                        return

            def _ok(self) -> None:
                if upstream.conditional and self.headers.get("If-None-Match") == upstream.etag:
                    self.send_response(304)
                    self.send_header("ETag", upstream.etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", upstream.content_type)
                self.send_header("Content-Length", str(len(upstream.body)))
                if upstream.content_encoding:
                    self.send_header("Content-Encoding", upstream.content_encoding)
                self.send_header("ETag", upstream.etag)
                self.send_header("Last-Modified", "Sat, 28 Nov 2026 09:00:00 GMT")
                self.end_headers()
                self.wfile.write(upstream.body)

        return Handler
