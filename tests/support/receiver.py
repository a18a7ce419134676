"""A webhook receiver on 127.0.0.1 over real TCP that answers from a script: a status, a pause
longer than the sender waits, a redirect, or a 404 that echoes the path (as many frameworks'
error pages do); then 200 once the script is spent."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Literal

from .upstream import LocalServer, QuietHandler

Answer = int | Literal["slow", "redirect", "echo"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None  # None: the receiver kept the sender waiting past its timeout


@dataclass
class Receiver(LocalServer):
    script: list[Answer] = field(default_factory=list)  # answers to the first requests, in order
    slow_s: float = 2.0  # how long "slow" keeps the sender waiting
    delay_s: float = 0.0  # a pause before every answer
    received: list[Received] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # serve https with this context (from `start`)
    server_names: list[str | None] = field(default_factory=list)  # SNI of each TLS handshake
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host!s}:{port}/hooks/budget?source=aiserver"

    def start(self) -> None:
        if self.tls is not None:
            names = self.server_names
            self.tls.sni_callback = lambda _sock, name, _ctx: names.append(name)
        super().start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    n = len(receiver.received)
                    answer = receiver.script[n] if n < len(receiver.script) else 200
                    receiver.received.append(
                        Received(
                            self.path, dict(self.headers.items()), body,
                            None if answer == "slow" else 302 if answer == "redirect"
                            else 404 if answer == "echo" else answer,
                        )
                    )  # fmt: skip
                time.sleep(receiver.slow_s if answer == "slow" else receiver.delay_s)
                # a late 200 counts for nothing: the sender gave up before it
                status = {"redirect": 302, "slow": 200, "echo": 404}.get(str(answer), answer)
                text = b"receiver is sad\n\x00" if status != 200 else b"ok"
                if answer == "echo":
                    text = f"Cannot POST {self.path}".encode()
                self.send_response(status)
                if answer == "redirect":
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.send_header("Content-Length", str(len(text)))
                try:
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:  # the sender gave up waiting and closed the connection
                    self.close_connection = True

        tls = receiver.tls
        if tls is None:
            return Handler

        class TlsHandler(Handler):
            refused = False  # the client refused the handshake (our certificate, say)

            def setup(self) -> None:
                # the handshake in the connection's thread: the server keeps accepting
                try:
                    self.request = tls.wrap_socket(self.request, server_side=True)
                except OSError:  # ssl.SSLError among them
                    self.refused = True
                super().setup()

            def handle(self) -> None:
                if not self.refused:
                    super().handle()

        return TlsHandler
