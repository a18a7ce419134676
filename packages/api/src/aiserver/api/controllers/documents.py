"""Documents: upload one, follow its conversion (task runner), fetch its PDF, text and pages.

The work is `aiserver.documents.service`'s; this controller decodes, calls and encodes. The
upload's body limit comes from DOCUMENT_MAX_BYTES when the app is built (see `wiring`).

Who sees what (`auth.documents_access`, then `service.Reader`): a document uploaded with a
project's key (scope `ingest` or `admin`) is that project's, and only its keys (any scope) and
the operator read it; any other key is answered as if it did not exist. A document uploaded
without a credential, or with the operator's token, is no project's: anyone reads it, unless
DOCUMENT_REQUIRE_KEY is set, which refuses requests without a credential (401) and leaves the
documents of no project to the operator. A credential that is sent must be valid, setting or not.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final
from urllib.parse import quote

import msgspec
from arq.connections import ArqRedis
from arq.constants import default_queue_name
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.status_codes import HTTP_202_ACCEPTED

from aiserver.api import auth
from aiserver.api.problems import problem_responses
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import require_pool
from aiserver.documents import service
from aiserver.documents.errors import UnknownPage, UnsupportedDocumentType
from aiserver.documents.jobs import JOB_EXPIRES_S
from aiserver.ledger.access import Access

_PAGE_FILE: Final = re.compile(r"^(\d{1,5})\.png$")


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


def content_disposition(filename: str) -> str:
    """`inline` with the file name a browser saves the PDF as (RFC 6266): in ASCII, each other
    character, quote, backslash or control character as `_`, and whole in UTF-8 (`filename*`)."""
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def document_reader(request: Request[Any, Any, Any]) -> service.Reader:
    """Which documents the request may read (a dependency, after `auth.documents_access`)."""
    settings: ApiSettings = request.app.state.settings
    return reader_of(settings, request.state.access)


def reader_of(settings: ApiSettings, access: Access | None) -> service.Reader:
    """Which documents `access` (None: no credential) may read, and follow the conversion of."""
    if access is None:
        return service.Reader.under(settings.documents)
    return service.Reader.under(settings.documents, access.project_id, operator=access.is_operator)


async def may_upload(connection: auth.AnyConnection, _: Any) -> None:
    """Guard of the upload, after `auth.documents_access` and before the body is read: a
    project's key needs the scope `ingest` or `admin` (a `read` key reads, it does not add)."""
    access: Access | None = connection.state.access
    if access is not None and not access.is_operator:
        access.require("ingest", "admin")


async def multipart_only(connection: auth.AnyConnection, _: Any) -> None:
    """Guard of the upload, before the body is read: a body that is no multipart form (a JSON
    document, a file sent raw) is a 415 that says how to send one, not Litestar's 400 "Invalid
    multipart/form-data"."""
    given = connection.headers.get("content-type", "")
    if given.partition(";")[0].strip().lower() != "multipart/form-data":
        raise UnsupportedDocumentType(
            "send the document as multipart/form-data, in the form field `file` (curl -F "
            f"file=@report.pdf); the request's Content-Type is {given[:100] or 'missing'!r}"
        )


#: Each route takes a bearer credential, or none (unless DOCUMENT_REQUIRE_KEY is set).
_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {}]
_READER: Final = {"reader": Provide(document_reader, sync_to_thread=False)}


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ("documents",)
    guards = (auth.documents_access,)
    dependencies = _READER
    security = _SECURITY

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Upload a document for conversion",
        responses=problem_responses(400, 401, 403, 413, 415, 422, 503),
        guards=[may_upload, multipart_only],
    )
    async def upload(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[DocumentForm, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> DocumentAccepted:
        """Multipart upload in the form field `file`: PDF, DOCX, DOC, ODT, RTF or TXT, at most
        DOCUMENT_MAX_BYTES (default 20 MiB). Answers 202 with the document id; the task runner
        converts it (GET /v1/documents/{id} tells the status). Uploaded with a project's key
        (scope `ingest` or `admin`), the document is that project's: only its keys read it."""
        settings: ApiSettings = request.app.state.settings
        redis: ArqRedis = request.app.state.redis
        access: Access | None = request.state.access

        async def enqueue(function: str, job_id: str, document_id: str) -> str:
            job = await redis.enqueue_job(
                function, document_id, _job_id=job_id, _queue_name=default_queue_name,
                _expires=JOB_EXPIRES_S,
            )  # fmt: skip
            assert job is not None  # a fresh document id never collides
            return job.job_id

        upload = service.Upload(
            filename=data.file.filename,
            content_type=data.file.content_type,
            content=await data.file.read(),
        )
        submitted = await service.submit(
            require_pool(), upload, settings.documents, enqueue=enqueue,
            project_id=None if access is None else access.project_id,
        )  # fmt: skip
        return DocumentAccepted(
            id=submitted.document_id,
            status="queued",
            status_url=f"/v1/documents/{submitted.document_id}",
            job_id=submitted.job_id,
        )

    @get(
        "/{document_id:uuid}",
        summary="Status and results of a document",
        responses=problem_responses(400, 401, 404, 503),
    )
    async def status(
        self, document_id: FromPath[uuid.UUID], reader: NamedDependency[service.Reader]
    ) -> DocumentOut:
        document = await service.read(require_pool(), document_id, reader=reader)
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

    @get(
        "/{document_id:uuid}/pdf",
        summary="The document as PDF",
        media_type="application/pdf",
        responses=problem_responses(400, 401, 404, 503),
    )
    async def pdf(
        self, document_id: FromPath[uuid.UUID], reader: NamedDependency[service.Reader]
    ) -> Response[bytes]:
        filename, pdf = await service.read_pdf(require_pool(), document_id, reader=reader)
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": content_disposition(filename)},
        )

    @get(
        "/{document_id:uuid}/pages/{page_file:str}",
        summary="One page as PNG",
        media_type="image/png",
        responses=problem_responses(400, 401, 404, 503),
    )
    async def page(
        self,
        document_id: FromPath[uuid.UUID],
        page_file: FromPath[str],
        reader: NamedDependency[service.Reader],
    ) -> Response[bytes]:
        match = _PAGE_FILE.match(page_file)
        if match is None:
            raise UnknownPage("pages are named <n>.png, from 1.png")
        page = int(match.group(1))
        png = await service.read_page(require_pool(), document_id, page, reader=reader)
        return Response(png, media_type="image/png")
