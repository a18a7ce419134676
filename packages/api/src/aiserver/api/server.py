"""The HTTP/1.1 protocol the API serves with where httptools is installed (the images): uvicorn's,
with a bound on a request's head.

uvicorn's httptools protocol bounds no header: httptools gathers a header's value whole before
it hands it over, so one connection sending a 200 MB header line made the server hold 200 MB
(measured: resident memory from 29 MB to 223 MB), and the request then reached the app. A few
such connections would exhaust the API's memory. Here the bytes a request's head takes are
counted as they arrive (request line and headers, until the blank line that ends them), and a
head past `MAX_HEAD_BYTES` is answered 431 with a problem body and the connection closed, before
more of it is read. (uvicorn's h11 protocol, which serves where httptools is missing, refuses a
head it has buffered past 16 KiB incomplete, and bounds it so on its own.)

Importing this module imports httptools (`aiserver.api.cli` falls back to h11 without it).
"""

from __future__ import annotations

from typing import Final

import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from aiserver.core_db.errors import problem

#: The most a request's line and headers may take together. A browser's or an SDK's head is a
#: few KiB; the dashboard's session cookie and a key in `Authorization` are under 1 KiB each.
MAX_HEAD_BYTES: Final = 64 * 1024

_DETAIL: Final = (
    f"the request's line and headers take more than {MAX_HEAD_BYTES} bytes: send fewer or "
    "shorter headers, or move long values into the body"
)
#: No `instance`: the request's path may not have arrived whole.
_BODY: Final = msgspec.json.encode(problem(431, _DETAIL))


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, which answers 431 to a request head past MAX_HEAD_BYTES.

    A chunk of data read while a head is incomplete counts whole towards it (a chunk is at most
    what one read returns, 256 KiB); a chunk in which the previous request ended does not count
    (where the next head starts in it is not known), so a head is refused at most one chunk past
    the bound."""

    _head_bytes = 0
    _reading_head = True
    _ended_here = False

    def data_received(self, data: bytes) -> None:
        self._ended_here = False
        super().data_received(data)
        if not self._reading_head or self._ended_here or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.logger.warning("Request head too large: answered 431, connection closed.")
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0
        self._ended_here = True

    def _refuse_head(self) -> None:
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend([
            b"content-type: application/problem+json\r\n",
            b"content-length: ", str(len(_BODY)).encode(), b"\r\n",
            b"connection: close\r\n\r\n", _BODY,
        ])  # fmt: skip
        self.transport.write(b"".join(head))
        self.transport.close()
