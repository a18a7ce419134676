"""The bounds of one upload and one conversion, from `DocumentSettings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiserver.documents.settings import DocumentSettings

#: An upload's HTTP body may be this much larger than DOCUMENT_MAX_BYTES (multipart framing).
MULTIPART_SLACK: Final = 64 * 1024


def upload_body_limit(settings: DocumentSettings) -> int:
    """The largest HTTP body of an upload: the document plus its multipart framing."""
    return settings.document_max_bytes + MULTIPART_SLACK


@dataclass(frozen=True, slots=True)
class Limits:
    """What one conversion may take: time, pages rendered, text kept, image resolution, and
    the bytes of the page images together."""

    timeout_s: float
    max_pages: int
    max_text_bytes: int
    dpi: int
    max_image_bytes: int = 256 * 1024 * 1024

    @classmethod
    def of(cls, settings: DocumentSettings) -> Limits:
        return cls(
            timeout_s=settings.document_conversion_timeout_seconds,
            max_pages=settings.document_max_pages,
            max_text_bytes=settings.document_max_text_bytes,
            dpi=settings.document_render_dpi,
            max_image_bytes=settings.document_max_image_bytes,
        )
