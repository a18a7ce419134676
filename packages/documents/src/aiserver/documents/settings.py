"""The documents' settings (read by `aiserver.core_db.settings.load_settings`)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from aiserver.core_db.settings import PositiveFloat, PositiveInt, Section


class DocumentSettings(Section, frozen=True, kw_only=True):
    """How large an upload may be, and how much work one conversion may take."""

    document_max_bytes: PositiveInt = 20 * 1024 * 1024
    document_max_pages: PositiveInt = 50
    document_max_text_bytes: PositiveInt = 2 * 1024 * 1024
    #: the page images of one document together (PNG bytes): the pages past it are not kept
    document_max_image_bytes: PositiveInt = 256 * 1024 * 1024
    document_render_dpi: Annotated[int, msgspec.Meta(ge=36, le=600)] = 100
    document_conversion_timeout_seconds: PositiveFloat = 120.0
    document_max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    #: a document done or failed this many days ago is deleted, with its PDF and pages, by the
    #: task runner's hourly sweep; 0 keeps every document for ever
    document_retention_days: Annotated[int, msgspec.Meta(ge=0, le=36500)] = 0
    #: the API refuses document requests without a credential (401); documents uploaded
    #: without one before are then the operator's alone to read. Off: anyone may upload, and
    #: read the documents that belong to no project (a project key's uploads are its own)
    document_require_key: bool = False
