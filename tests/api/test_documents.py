"""Documents end to end: upload through the API, convert in a task-runner worker, read results."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.api.controllers.documents import content_disposition
from aiserver.documents.service import pdf_name

from ..conftest import Settings, replace_settings
from ..support.docs import docx
from .test_endpoints import assert_problem

Client = AsyncTestClient  # type: ignore[type-arg]


async def run_worker(settings: Settings) -> str:
    """A task runner in burst mode, in its own process (as in production: the API's test client
    runs the app on another event loop, which a worker in this process must not share)."""
    env = dict(
        os.environ,
        DATABASE_URL=settings.core.database_url,
        REDIS_URL=settings.core.redis_url,
        LOG_FORMAT="json",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.taskrunner.cli", "--burst", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def upload(client: Client, name: str, data: bytes, content_type: str) -> Any:
    return await client.post("/v1/documents", files={"file": (name, data, content_type)})


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


async def test_a_docx_is_converted_and_its_results_are_served(
    client: Client, api_settings: Settings
) -> None:
    response = await upload(client, "letter.docx", docx("Dear Ada, page one", "page two"), DOCX)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    queued = (await client.get(accepted["status_url"])).json()
    assert (queued["status"], queued["links"]["pdf"]) == ("queued", None)

    log = await run_worker(api_settings)
    assert '"event": "document converted"' in log

    done = (await client.get(accepted["status_url"])).json()
    assert done["status"] == "done"
    assert (done["page_count"], done["pages_rendered"], done["error"]) == (2, 2, None)
    assert "Dear Ada, page one" in done["text"]
    assert done["filename"] == "letter.docx"
    base = accepted["status_url"]
    assert done["links"] == {
        "pdf": f"{base}/pdf",
        "pages": [f"{base}/pages/1.png", f"{base}/pages/2.png"],
    }
    pdf = await client.get(done["links"]["pdf"])
    assert (pdf.status_code, pdf.headers["content-type"]) == (200, "application/pdf")
    assert pdf.content.startswith(b"%PDF-")
    # a browser shows it, and saves it under the upload's name
    disposition = "inline; filename=\"letter.pdf\"; filename*=UTF-8''letter.pdf"
    assert pdf.headers["content-disposition"] == disposition
    page = await client.get(done["links"]["pages"][0])
    assert page.headers["content-type"] == "image/png"
    assert page.content.startswith(b"\x89PNG")
    assert_problem(await client.get(f"{base}/pages/3.png"), 404, "no page 3.png")
    assert_problem(await client.get(f"{base}/pages/one.png"), 404, "pages are named")

    # a re-run of the finished job changes nothing
    redis = await create_pool(RedisSettings.from_dsn(api_settings.core.redis_url))
    try:
        await redis.enqueue_job("process_document", accepted["id"], _job_id="rerun")
    finally:
        await redis.aclose()
    again = await run_worker(api_settings)
    assert '"function": "process_document"' in again
    assert '"event": "job finished"' in again
    assert "document converted" not in again  # nothing converted the second time
    assert (await client.get(base)).json()["finished_at"] == done["finished_at"]


async def test_a_corrupt_document_ends_failed_with_a_reason(
    client: Client, api_settings: Settings
) -> None:
    response = await upload(client, "broken.docx", b"PK\x03\x04 not really", DOCX)
    assert response.status_code == 202
    await run_worker(api_settings)
    status = (await client.get(response.json()["status_url"])).json()
    assert status["status"] == "failed"
    assert status["error"].startswith("LibreOffice could not convert the docx file")
    assert_problem(await client.get(response.json()["status_url"] + "/pdf"), 404, "no PDF")


async def test_unsupported_and_oversized_uploads_are_refused(
    api_settings: Settings, redis_clean: None
) -> None:
    small = replace_settings(api_settings, document_max_bytes=1000)
    async with AsyncTestClient(app=create_app(small)) as client:
        body = assert_problem(
            await upload(client, "tool.exe", b"MZ\x90\x00", "application/octet-stream"),
            415,
            "unsupported document type '.exe'",
        )
        assert "DOCX" in body["detail"]
        assert_problem(
            await upload(client, "big.txt", b"x" * 2000, "text/plain"), 413, "DOCUMENT_MAX_BYTES"
        )
        assert_problem(await upload(client, "empty.pdf", b"", "application/pdf"), 422, "empty")
        # a body that is no multipart form says how to send one (it was a 400 "Invalid
        # multipart/form-data"), before the body is read
        for sent in ({"json": {"file": "report.pdf"}},
                     {"content": b"%PDF-1.4", "headers": {"content-type": "application/pdf"}},
                     {"content": b"%PDF-1.4"}):  # fmt: skip
            body = assert_problem(await client.post("/v1/documents", **sent), 415,
                                  "send the document as multipart/form-data, in the form field "
                                  "`file`")  # fmt: skip
            assert body["type"].endswith(":unsupported-media-type")
        # a file name past the form parser's limits says so (it said "Request Entity Too
        # Large", with a 400, for a body of a few kilobytes)
        assert_problem(await upload(client, "a" * 5000 + ".txt", b"hi", "text/plain"), 400,
                       "a header line of a part longer than about 4 KB (a file name that "
                       "long)")  # fmt: skip
        assert_problem(
            await client.get("/v1/documents/00000000-0000-0000-0000-000000000000"),
            404,
            "no document",
        )


async def test_a_raised_document_limit_takes_effect_on_the_upload_route(
    api_settings: Settings, redis_clean: None
) -> None:
    """DOCUMENT_MAX_BYTES above its default: the route's body limit follows it (it was fixed
    from the default when the module was imported, so a larger document was a 413)."""
    default = api_settings.documents.document_max_bytes
    larger = replace_settings(api_settings, document_max_bytes=default + 2 * 1024 * 1024)
    text = b"an exact ledger of model calls\n" * ((default + 1024 * 1024) // 31)
    assert default < len(text) < larger.documents.document_max_bytes
    async with AsyncTestClient(app=create_app(larger)) as client:
        response = await upload(client, "long.txt", text, "text/plain")
        assert response.status_code == 202, response.text
        stored = (await client.get(response.json()["status_url"])).json()
        assert stored["size_bytes"] == len(text)
    async with AsyncTestClient(app=create_app(api_settings)) as client:
        assert_problem(await upload(client, "long.txt", text, "text/plain"), 413, "too large")


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("Q3 report.pdf", "inline; filename=\"Q3 report.pdf\"; filename*=UTF-8''Q3%20report.pdf"),
        (
            'Bücher "neu"\\x.pdf',
            'inline; filename="B_cher _neu__x.pdf"; '
            "filename*=UTF-8''B%C3%BCcher%20%22neu%22%5Cx.pdf",
        ),
        (
            "a\r\nSet-Cookie: x.pdf",
            'inline; filename="a__Set-Cookie: x.pdf"; '
            "filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x.pdf",
        ),
    ],
    ids=["space", "non-ascii-quote-backslash", "header-injection"],
)
def test_the_pdfs_file_name_is_safe_in_its_header(filename: str, expected: str) -> None:
    assert content_disposition(filename) == expected


@pytest.mark.parametrize(
    ("uploaded", "served"),
    [
        ("letter.docx", "letter.pdf"),
        ("report.final.odt", "report.final.pdf"),
        (".docx", "document.pdf"),
        ("C:\\Users\\ada\\letter.docx", "letter.pdf"),
        ("dir/sub/notes.txt", "notes.pdf"),
    ],
)
def test_the_pdf_is_served_under_the_uploads_name(uploaded: str, served: str) -> None:
    assert pdf_name(uploaded) == served
