"""The kinds of document accepted, named by file extension."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Final, Literal

from aiserver.documents.errors import UnsupportedDocumentType

Kind = Literal["pdf", "docx", "doc", "odt", "rtf", "txt"]

#: By file extension (lower case); the content type a client sends is not trusted.
BY_EXTENSION: Final[dict[str, Kind]] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".doc": "doc",
    ".odt": "odt",
    ".rtf": "rtf",
    ".txt": "txt",
}
KINDS: Final[tuple[Kind, ...]] = tuple(BY_EXTENSION.values())
#: Kinds that LibreOffice converts to PDF first; a PDF goes straight to poppler.
OFFICE_KINDS: Final = frozenset(KINDS) - {"pdf"}


def kind_of(filename: str, content_type: str | None = None) -> Kind:
    """The kind of an upload by its file name; `UnsupportedDocumentType` for any other."""
    suffix = PurePosixPath(filename).suffix.lower()
    kind = BY_EXTENSION.get(suffix)
    if kind is None:
        allowed = ", ".join(sorted(k.lstrip(".").upper() for k in BY_EXTENSION))
        raise UnsupportedDocumentType(
            f"unsupported document type {suffix or '(no extension)'!r} "
            f"({content_type}); allowed: {allowed}"
        )
    return kind
