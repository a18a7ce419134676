"""Documents: upload one, follow its conversion (task runner), fetch its PDF, text and pages."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Annotated, Final

import msgspec
from arq.connections import ArqRedis
from arq.constants import default_queue_name
from litestar import Controller, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.status_codes import HTTP_202_ACCEPTED

from aiserver.api.problems import Problem
from aiserver.core_db.database import require_pool
from aiserver.core_db.documents.store import (
    Kind,
    create_document,
    get_document,
    get_page,
    get_pdf,
    set_job,
)
from aiserver.core_db.settings import Settings

#: The task runner's job, enqueued by name.
PROCESS_JOB: Final = "process_document"
TIMEOUT_S: Final = 5.0
#: Allowed types: by file extension, with the content types browsers and clients send for them.
ALLOWED: Final[dict[str, Kind]] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".doc": "doc",
    ".odt": "odt",
    ".rtf": "rtf",
    ".txt": "txt",
}
_PAGE_FILE: Final = re.compile(r"^(\d{1,5})\.png$")
#: Upload bodies may be this much larger than DOCUMENT_MAX_BYTES (multipart framing).
_MULTIPART_SLACK: Final = 64 * 1024


@dataclass
class DocumentForm:
    """The multipart form of an upload. Named, so that a form without a file in `file` is a 4xx
    problem: a bare UploadFile made Litestar fail with a 500 on a form holding no file."""

    file: UploadFile


class DocumentAccepted(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    status: str
    status_url: str
    job_id: str


class DocumentLinks(msgspec.Struct, frozen=True, kw_only=True):
    pdf: str | None
    pages: list[str]


class DocumentOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    filename: str
    kind: str
    size_bytes: int
    status: str  # queued, processing, done, failed
    error: str | None
    page_count: int | None
    pages_rendered: int
    text: str | None
    text_truncated: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: DocumentLinks


def _kind(upload: UploadFile) -> Kind:
    suffix = PurePosixPath(upload.filename or "").suffix.lower()
    kind = ALLOWED.get(suffix)
    if kind is None:
        allowed = ", ".join(sorted(k.lstrip(".").upper() for k in ALLOWED))
        raise Problem(
            415,
            f"unsupported document type {suffix or '(no extension)'!r} "
            f"({upload.content_type}); allowed: {allowed}",
            type_="unsupported-media-type",
        )
    return kind


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ("documents",)

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Upload a document for conversion",
        request_max_body_size=Settings().document_max_bytes + _MULTIPART_SLACK,
    )
    async def upload(
        self,
        state: State,
        data: Annotated[DocumentForm, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> DocumentAccepted:
        """Multipart upload in the form field `file`: PDF, DOCX, DOC, ODT, RTF or TXT, at most
        DOCUMENT_MAX_BYTES (default 20 MiB). Answers 202 with the document id; the task runner
        converts it (GET /v1/documents/{id} tells the status)."""
        settings: Settings = state.settings
        upload = data.file
        kind = _kind(upload)
        content = await upload.read()
        if len(content) > settings.document_max_bytes:
            raise Problem(413, f"the document is larger than {settings.document_max_bytes} bytes "
                          "(DOCUMENT_MAX_BYTES)", type_="too-large")  # fmt: skip
        if not content:
            raise Problem(422, "the uploaded file is empty", type_="invalid-request")
        filename = PurePosixPath(upload.filename or f"document.{kind}").name[:255]
        redis: ArqRedis = state.redis
        async with asyncio.timeout(TIMEOUT_S), require_pool().acquire() as conn, conn.transaction():
            document_id = await create_document(
                conn, filename=filename, content_type=upload.content_type or "", kind=kind,
                data=content,
            )  # fmt: skip
            # Enqueued inside the transaction: if Redis is down, the row is rolled back (503).
            job = await redis.enqueue_job(
                PROCESS_JOB, str(document_id), _queue_name=default_queue_name,
                _job_id=f"document:{document_id}",
            )  # fmt: skip
            assert job is not None  # a fresh uuid never collides
            await set_job(conn, document_id, job.job_id)
        return DocumentAccepted(
            id=document_id,
            status="queued",
            status_url=f"/v1/documents/{document_id}",
            job_id=job.job_id,
        )

    @get("/{document_id:uuid}", summary="Status and results of a document")
    async def status(self, document_id: FromPath[uuid.UUID]) -> DocumentOut:
        async with asyncio.timeout(TIMEOUT_S), require_pool().acquire() as conn:
            document = await get_document(conn, document_id)
        if document is None:
            raise Problem(404, f"no document {document_id}", type_="unknown-document")
        base = f"/v1/documents/{document_id}"
        done = document.status == "done"
        return DocumentOut(
            id=document.id,
            filename=document.filename,
            kind=document.kind,
            size_bytes=document.size_bytes,
            status=document.status,
            error=document.error,
            page_count=document.page_count,
            pages_rendered=document.pages_rendered,
            text=document.text,
            text_truncated=document.text_truncated,
            created_at=document.created_at,
            started_at=document.started_at,
            finished_at=document.finished_at,
            links=DocumentLinks(
                pdf=f"{base}/pdf" if done else None,
                pages=[f"{base}/pages/{n}.png" for n in range(1, document.pages_rendered + 1)],
            ),
        )

    @get("/{document_id:uuid}/pdf", summary="The document as PDF", media_type="application/pdf")
    async def pdf(self, document_id: FromPath[uuid.UUID]) -> Response[bytes]:
        async with asyncio.timeout(TIMEOUT_S), require_pool().acquire() as conn:
            pdf = await get_pdf(conn, document_id)
        if pdf is None:
            raise Problem(404, f"no PDF for document {document_id} (unknown, or not done yet)",
                          type_="not-ready")  # fmt: skip
        return Response(pdf, media_type="application/pdf")

    @get("/{document_id:uuid}/pages/{page_file:str}", summary="One page as PNG",
         media_type="image/png")  # fmt: skip
    async def page(
        self, document_id: FromPath[uuid.UUID], page_file: FromPath[str]
    ) -> Response[bytes]:
        match = _PAGE_FILE.match(page_file)
        if match is None:
            raise Problem(404, "pages are named <n>.png, from 1.png", type_="unknown-page")
        async with asyncio.timeout(TIMEOUT_S), require_pool().acquire() as conn:
            png = await get_page(conn, document_id, int(match.group(1)))
        if png is None:
            raise Problem(404, f"no page {page_file} for document {document_id}",
                          type_="unknown-page")  # fmt: skip
        return Response(png, media_type="image/png")
