"""The HTTP/1.1 protocol the API serves with where httptools is installed (the images): uvicorn's,
with a bound on a request's head.

uvicorn's httptools protocol bounds no header: httptools gathers a header's value whole before
it hands it over, so one connection sending a 200 MB header line made the server hold 200 MB
(measured: resident memory from 29 MB to 223 MB), and the request then reached the app. A few
such connections would exhaust the API's memory. Here the bytes a request's head takes are
counted as they arrive (request line and headers, until the blank line that ends them), and a
head past `MAX_HEAD_BYTES` is answered 431 with a problem body and the connection closed, before
more of it is parsed. A head that arrived whole in one read is measured as it is parsed, and
refused before it reaches the app. A chunked body's trailer lines, which httptools gathers whole
too, are bounded the same way: past the bound the connection is closed. (uvicorn's h11
protocol, which serves where httptools is missing, refuses a head it has buffered past 16 KiB
incomplete, and bounds it so on its own.)

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

#: How long a refused connection is still read after the 431 (what it sends is dropped), unless
#: the client closes first. A socket closed with data it has not read sends a reset, which can
#: discard the 431 at the client before it reads it (seen in tests of a client still sending);
#: so the answer is followed by the end of the server's side, and the connection is closed
#: once the client closes its side or this time has passed: the "lingering close" of nginx and
#: Apache.
LINGER_S: Final = 2.0

_DETAIL: Final = (
    f"the request's line and headers take more than {MAX_HEAD_BYTES} bytes: send fewer or "
    "shorter headers, or move long values into the body"
)
#: No `instance`: the request's path may not have arrived whole.
_BODY: Final = msgspec.json.encode(problem(431, _DETAIL))


class HeadTooLarge(Exception):
    """Raised in httptools' callback to stop parsing a head already refused (`_refuse_head`)."""


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, which answers 431 to a request head past MAX_HEAD_BYTES.

    Two counts, either of which refuses. While a head is incomplete, each chunk of data read
    counts whole towards it (a chunk is at most what one read returns, 256 KiB); a chunk in
    which the previous request ended does not count (where the next head starts in it is not
    known). So that a head arriving whole in such a chunk is bounded too, the URL and headers
    that httptools hands over are counted as well, and a head past the bound is refused when
    it is complete, before the app sees the request. (uvicorn then logs "Invalid HTTP request
    received.", as for any request the parser gave up on, after this protocol's own line.)"""

    _head_bytes = 0
    _parsed = 0
    _reading_head = True
    _ended_here = False
    _refused = False
    #: the 431 waits for the answers to the requests before the refused head (pipelined)
    _refusing = False
    #: a chunk's size line read and none of its data yet (`on_chunk_header`), and the bytes
    #: of the reads since in which nothing else moved (`_chunk_moved`: no data, no chunk's or
    #: line's end): past MAX_HEAD_BYTES, one trailer line held whole (`_refuse_trailers`). The
    #: read in which the last chunk began is not counted (where in it is not known): a trailer
    #: line is refused at most one read (256 KiB) past the bound.
    _chunk_pending = False
    _chunk_moved = False
    _trailer_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._refused:  # after the refusal: dropped unparsed (`LINGER_S`)
            return
        self._ended_here = self._chunk_moved = False
        super().data_received(data)
        if self._ended_here or self.transport.is_closing():
            return
        if self._chunk_pending:  # perhaps in the trailers, gathered whole as a head's lines
            if not self._chunk_moved:  # a read of nothing else: no data, no line ended
                self._trailer_bytes += len(data)
            if self._trailer_bytes > MAX_HEAD_BYTES:
                self._refuse_trailers()
            return
        if not self._reading_head:
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()

    def on_chunk_header(self) -> None:
        """A chunk's size line was read: until its data comes, this may be the last chunk, whose
        trailer lines (header lines after the body) httptools gathers whole, as a head's."""
        self._chunk_pending = self._chunk_moved = True
        self._trailer_bytes = 0

    def on_chunk_complete(self) -> None:
        self._chunk_pending = False
        self._chunk_moved = True

    def on_body(self, body: bytes) -> None:
        self._chunk_pending = False
        self._chunk_moved = True
        super().on_body(body)

    def on_message_begin(self) -> None:
        self._parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._chunk_moved = True  # a trailer line ended, if in the trailers
        self._parsed += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        if self._parsed > MAX_HEAD_BYTES:
            self._refuse_head()
            raise HeadTooLarge  # httptools stops: nothing more of this connection is parsed
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0
        self._ended_here = True

    def on_response_complete(self) -> None:
        if not self._refusing:
            super().on_response_complete()
        elif self.pipeline:  # a request pipelined before the refused head is answered next
            super().on_response_complete()
            self.flow.pause_reading()
        else:
            self.server_state.total_requests += 1
            if not self.transport.is_closing():
                self._send_refusal()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser stopped by HeadTooLarge: the 431 is on its way
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        """Refuse the head being read: the 431 now, or, while an answer to a request before it
        is still to be sent (the one being answered, or one pipelined), once the answers before
        it are sent, in order, nothing more being read meanwhile."""
        self.logger.warning("Request head too large: answered 431, connection closed.")
        self._refused = True
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            self._refusing = True
            self.flow.pause_reading()
        else:
            self._send_refusal()

    def _refuse_trailers(self) -> None:
        """Trailer lines past the bound: the request's body has reached the app, which may be
        answering it, so no 431 can be sent in order; the connection is closed, and the app,
        still reading the body, is told the client went away (uvicorn's `connection_lost`)."""
        self.logger.warning("Request trailers too large: connection closed.")
        self._refused = True
        self.transport.close()

    def _send_refusal(self) -> None:
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend([
            b"content-type: application/problem+json\r\n",
            b"content-length: ", str(len(_BODY)).encode(), b"\r\n",
            b"connection: close\r\n\r\n", _BODY,
        ])  # fmt: skip
        self.transport.write(b"".join(head))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the client reads the answer, then the end
        self.flow.resume_reading()  # dropped by data_received, as `_refused`; the client's
        # end closes the transport (uvicorn's `eof_received` keeps nothing open)
        self.loop.call_later(LINGER_S, self.transport.close)
