"""A document cannot make the task runner fetch what it links to (server-side request forgery).

An uploaded DOCX or ODT can name an image by URL instead of carrying it. LibreOffice, left to
its defaults, fetches it while it lays out the page: from the task runner, at any address the
uploader chose (the metadata service, PostgreSQL's host, anything on the internal network), and
draws the answer into the PDF, the page images and the text. Each conversion's profile blocks
that (`conversion._PROFILE_SETTINGS`). The linked URL here is a local server that records every
request and answers with an image holding a marker; the control conversion, with LibreOffice's
own defaults, shows that the same document does make the request when nothing blocks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from aiserver.documents import conversion
from aiserver.documents.conversion import convert
from aiserver.documents.errors import ConversionError
from aiserver.documents.kinds import OFFICE_KINDS

from ..support.docs import docx_linking, odt_linking
from ..support.upstream import LocalServer, QuietHandler
from .test_conversion import LIMITS, tools_present  # noqa: F401  (the tools' check, reused)

MARKER = "INTERNAL-ONLY-7731"
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="60">'
    f'<text x="5" y="40" font-size="30">{MARKER}</text></svg>'
).encode()
#: A profile with nothing of ours in it: LibreOffice's defaults, for the control conversion.
NO_SETTINGS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<oor:items xmlns:oor="http://openoffice.org/2001/registry"></oor:items>\n'
)


@dataclass
class Internal(LocalServer):
    """Stands for an internal service: it records each request and answers with `SVG`."""

    requests: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def link(self, name: str) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/latest/meta-data/{name}.svg"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(QuietHandler):
            def _record(self) -> None:
                with server._lock:
                    server.requests.append(f"{self.command} {self.path}")

            def do_GET(self) -> None:
                self._record()
                self.send_response(200)
                self.send_header("Content-Type", "image/svg+xml")
                self.send_header("Content-Length", str(len(SVG)))
                self.end_headers()
                self.wfile.write(SVG)

            def do_OPTIONS(self) -> None:  # LibreOffice asks first (WebDAV), then GETs
                self._record()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_OPTIONS
            do_PROPFIND = do_OPTIONS

        return Handler


@pytest.fixture
def internal() -> Iterator[Internal]:
    server = Internal()
    server.start()
    try:
        yield server
    finally:
        server.stop()


KINDS: dict[str, Callable[[str, str], bytes]] = {"docx": docx_linking, "odt": odt_linking}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_linked_image_is_not_fetched(internal: Internal, kind: str) -> None:
    document = KINDS[kind]("Quarterly report", internal.link(kind))
    converted = await convert(document, kind, LIMITS)  # type: ignore[arg-type]
    assert "Quarterly report" in converted.text  # converted all the same, without the image
    assert internal.requests == []
    assert MARKER not in converted.text


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_control_with_libreoffice_defaults_the_same_document_fetches_its_link(
    internal: Internal, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the profile's settings the request is made and its answer lands in the text: the
    test above proves something (if LibreOffice stops fetching these links, this one says so)."""
    monkeypatch.setattr(conversion, "_PROFILE_SETTINGS", NO_SETTINGS)
    document = KINDS[kind]("Quarterly report", internal.link(kind))
    converted = await convert(document, kind, LIMITS)  # type: ignore[arg-type]
    assert f"GET /latest/meta-data/{kind}.svg" in internal.requests
    assert MARKER in converted.text


LOCAL_MARKER = "LOCAL-FILE-5151"


@pytest.mark.parametrize("source", ["network", "local-file"])
@pytest.mark.parametrize("kind", sorted(OFFICE_KINDS))
async def test_html_named_as_an_office_kind_fetches_nothing(
    internal: Internal, kind: str, source: str, tmp_path: Path
) -> None:
    """LibreOffice chose its importer by the content, not the name: HTML uploaded as .doc,
    .docx, .odt or .rtf was opened as HTML, and its page background was fetched (from the
    network, or a file of the task runner) and drawn into the PDF, the images and the text."""
    local = tmp_path / "local.svg"
    local.write_text(SVG.decode().replace(MARKER, LOCAL_MARKER), encoding="utf-8")
    background = internal.link("background") if source == "network" else local.as_uri()
    html = (
        f'<html><head><link rel="stylesheet" href="{internal.link("style")}"></head>'
        f'<body background="{background}"><p>Quarterly report</p></body></html>'
    ).encode()
    if kind in ("rtf", "txt"):  # read as its kind: as no text, or as the HTML's characters
        converted = await convert(html, kind, LIMITS)  # type: ignore[arg-type]
        assert MARKER not in converted.text
        assert LOCAL_MARKER not in converted.text
    else:  # not a document of its kind: it fails, saying so
        with pytest.raises(ConversionError, match=f"^LibreOffice could not convert the {kind}"):
            await convert(html, kind, LIMITS)  # type: ignore[arg-type]
    assert internal.requests == []
