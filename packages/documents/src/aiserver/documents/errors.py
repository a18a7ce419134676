"""The documents' errors (see `aiserver.core_db.errors` for the base and the problem shape).

AiserverError
├── InvalidInput
│   ├── UnsupportedDocumentType   415 unsupported-media-type: not PDF, DOCX, DOC, ODT, RTF, TXT
│   ├── DocumentTooLarge          413 request-entity-too-large: over DOCUMENT_MAX_BYTES
│   ├── EmptyDocument             422 invalid-request: the uploaded file has no bytes
│   ├── UnknownDocument           404 unknown-document
│   ├── DocumentNotReady          404 document-not-ready: no PDF yet (unknown, or not converted)
│   └── UnknownPage               404 unknown-page
├── ConversionError               422 conversion-failed: the document cannot be converted;
│   └── ToolTimeout                   the message is the reason the document shows
└── (Unavailable) DatabaseStalled 503 database-stalled: a database step of the conversion job
                                      did not end in its bounds (a lock held, a hang)
"""

from __future__ import annotations

from aiserver.core_db.errors import AiserverError, InvalidInput, Unavailable


class UnsupportedDocumentType(InvalidInput, status=415, slug="unsupported-media-type"):
    pass


class DocumentTooLarge(InvalidInput, status=413, slug="request-entity-too-large"):
    pass


class EmptyDocument(InvalidInput):
    pass


class UnknownDocument(InvalidInput, status=404, slug="unknown-document"):
    pass


class DocumentNotReady(InvalidInput, status=404, slug="document-not-ready"):
    pass


class UnknownPage(InvalidInput, status=404, slug="unknown-page"):
    pass


class ConversionError(AiserverError, status=422, slug="conversion-failed"):
    """The document cannot be converted; the message is the reason shown to the user."""


class ToolTimeout(ConversionError):
    """A tool ran past its time and was killed with its process group."""

    def __init__(self, tool: str) -> None:
        super().__init__(f"{tool} timed out and was killed")
        self.tool = tool


class DatabaseStalled(Unavailable, slug="database-stalled"):
    """A database step of the conversion job did not end within its bounds: a lock that another
    session held on the document's row, a connection that hung, none free in the pool."""


class StalledBeforeTheTry(DatabaseStalled):
    """The database stalled before the job's try was counted: nothing of the try is written,
    the document stays `queued`, and the job runs again later (the task runner raises arq's
    `Retry`); the last try the job has fails the document instead."""
