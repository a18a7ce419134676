"""Document conversion with the real LibreOffice and poppler (installed by .ci/run)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aiserver.documents.conversion import convert
from aiserver.documents.errors import ConversionError
from aiserver.documents.kinds import OFFICE_KINDS
from aiserver.documents.limits import Limits

from ..support.docs import _CONTENT_TYPES, _RELS, docx

if TYPE_CHECKING:
    from aiserver.documents.kinds import Kind

LIMITS = Limits(timeout_s=120, max_pages=10, max_text_bytes=1_000_000, dpi=50)


@pytest.fixture(autouse=True, scope="module")
def tools_present() -> None:
    missing = [t for t in ("soffice", "pdfinfo", "pdftotext", "pdftoppm") if not shutil.which(t)]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: install libreoffice-writer-nogui and poppler-utils "
            "(.ci/run does this)",
            pytrace=False,
        )


async def test_a_docx_converts_to_a_pdf_with_its_text_and_pages() -> None:
    converted = await convert(docx("Invoice 4711 for Ada", "Second page here"), "docx", LIMITS)
    assert converted.pdf.startswith(b"%PDF-")
    assert converted.page_count == 2
    assert "Invoice 4711 for Ada" in converted.text
    assert "Second page here" in converted.text
    assert converted.text_truncated is False
    assert len(converted.pages) == 2
    assert all(page.startswith(b"\x89PNG\r\n\x1a\n") for page in converted.pages)


@pytest.fixture(scope="module")
def saved_as(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The two-page DOCX of the test above, saved by LibreOffice as each other office kind."""
    work = tmp_path_factory.mktemp("saved-as")
    (work / "source.docx").write_bytes(docx("Invoice 4711 für Ada", "Second page here"))
    saved = {"docx": (work / "source.docx").read_bytes(), "txt": "Invoice 4711 für Ada\n".encode()}
    for kind in ("doc", "odt", "rtf"):
        subprocess.run(
            ["soffice", "--headless", f"-env:UserInstallation={(work / 'profile').as_uri()}",
             "--convert-to", kind, "--outdir", str(work), str(work / "source.docx")],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        saved[kind] = (work / f"source.{kind}").read_bytes()
    return saved


@pytest.mark.parametrize("kind", sorted(OFFICE_KINDS))
async def test_each_office_kind_converts_with_its_import_filter(
    saved_as: dict[str, bytes], kind: Kind
) -> None:
    """Each office kind is read with its own LibreOffice filter (never one guessed from the
    content); a real document of each kind still converts."""
    converted = await convert(saved_as[kind], kind, LIMITS)
    assert "Invoice 4711 für Ada" in converted.text
    assert converted.page_count == (1 if kind == "txt" else 2)


async def test_a_pdf_gives_pages_and_text_and_the_limits_hold() -> None:
    pdf = (await convert(docx("alpha", "beta", "gamma"), "docx", LIMITS)).pdf
    limits = Limits(timeout_s=60, max_pages=2, max_text_bytes=12, dpi=40)
    converted = await convert(pdf, "pdf", limits)
    assert converted.page_count == 3
    assert len(converted.pages) == 2  # max_pages rendered
    assert converted.text_truncated is True
    assert len(converted.text.encode()) <= 12
    assert converted.text.strip().startswith("alpha")


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (
            b"PK\x03\x04 this is no zip at all",
            "docx",
            "LibreOffice could not convert the docx file (corrupt, unsupported, or not in the "
            "DOCX format)",
        ),
        (
            b"not an odt",
            "odt",
            "LibreOffice could not convert the odt file (corrupt, unsupported, "
            "or not in the ODT format)",
        ),
        (b"%PDF-1.7\n garbage", "pdf", "not a readable PDF"),
        (b"", "pdf", "not a readable PDF"),
    ],
    ids=["corrupt-docx", "corrupt-odt", "corrupt-pdf", "empty-pdf"],
)
async def test_a_corrupt_file_fails_with_a_reason(data: bytes, kind: str, reason: str) -> None:
    with pytest.raises(ConversionError) as caught:
        await convert(data, kind, LIMITS)
    assert str(caught.value).startswith(reason)


async def test_a_conversion_past_its_timeout_is_killed_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its work directory under tmp_path: the processes left are looked for there alone (other
    # tests, in parallel, convert documents of their own)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    limits = Limits(timeout_s=0.3, max_pages=10, max_text_bytes=1000, dpi=50)
    expected = (
        r"took longer than 0\.3 s \(DOCUMENT_CONVERSION_TIMEOUT_SECONDS\); soffice was killed"
    )
    with pytest.raises(ConversionError, match=expected):
        await convert(docx("slow"), "docx", limits)
    await asyncio.sleep(0.5)
    assert _running(str(tmp_path)) == [], "the timed-out LibreOffice left processes behind"


async def test_two_conversions_at_once_both_succeed() -> None:
    first, second = await asyncio.gather(
        convert(docx("first document"), "docx", LIMITS),
        convert(docx("second document"), "docx", LIMITS),
    )
    assert "first document" in first.text
    assert "second document" in second.text


def _running(pattern: str) -> list[str]:
    return subprocess.run(
        ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
    ).stdout.split()


def test_a_tool_outlives_its_killed_task_runner_by_moments_only(tmp_path: Path) -> None:
    """A task runner killed mid-conversion (out of memory, SIGKILL) cannot kill its tools at
    their deadline; a LibreOffice stuck on a document then ran for good. The tool's own
    `timeout(1)` ends it a few seconds after that deadline (here a `sleep` stands for it: a
    tool that would never end by itself)."""
    seconds = f"{600 + uuid.uuid4().int % 10**6 / 10**7:.7f}"  # a `sleep` no one else runs
    code = (
        "import asyncio, pathlib\n"
        "from aiserver.documents.conversion import run_tool\n"
        f"asyncio.run(run_tool(['sleep', '{seconds}'], timeout=2.0, cwd=pathlib.Path("
        f"{str(tmp_path)!r})))\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", code])
    pattern = f"/sleep {seconds}$"  # the tool, by its path (and timeout(1) naming it)
    try:
        deadline = time.monotonic() + 20
        while not _running(pattern):
            assert time.monotonic() < deadline, "the tool never started"
            time.sleep(0.05)
        runner.kill()  # the task runner dies mid-conversion, before the tool's deadline
        runner.wait()
        killed_at = time.monotonic()
        assert _running(pattern), "the tool ended with its runner: nothing left to show"
        while _running(pattern) and time.monotonic() - killed_at < 15:
            time.sleep(0.1)
        assert _running(pattern) == [], "the tool outlived its task runner past its deadline"
        assert time.monotonic() - killed_at >= 2.0  # ended by its deadline, not by the kill
    finally:
        subprocess.run(["pkill", "-KILL", "-f", pattern], check=False)


async def test_a_tool_that_is_not_installed_fails_the_conversion_naming_it(tmp_path: Path) -> None:
    """A failed document with a reason, never one left `processing` by an exception the job
    does not expect (FileNotFoundError)."""
    from aiserver.documents.conversion import run_tool

    with pytest.raises(ConversionError, match=r"^no-such-tool-7f3a is not installed on the task"):
        await run_tool(["no-such-tool-7f3a", "--version"], timeout=5, cwd=tmp_path)


async def test_a_tools_temporary_files_go_in_its_work_directory(tmp_path: Path) -> None:
    """Before, TMPDIR was the system's: a LibreOffice killed at its timeout left lu*.tmp
    directories and pipes in /tmp that no sweep removed."""
    from aiserver.documents.conversion import run_tool

    made = await run_tool(["mktemp"], timeout=5, cwd=tmp_path)
    assert Path(made.decode().strip()).parent == tmp_path


async def test_a_tool_is_cut_once_its_output_passes_the_bound(tmp_path: Path) -> None:
    """pdftotext wrote every page's text into this process's memory before the text was cut
    to DOCUMENT_MAX_TEXT_BYTES: a 789 KB PDF of 5,000 pages gave 90 MB. A tool that writes
    without end (`yes`) is now killed once it has passed the bound, and what it wrote so far is
    the answer (before, it ran to its timeout)."""
    from aiserver.documents.conversion import run_tool

    out = await run_tool(["yes", "a line of text"], timeout=20, cwd=tmp_path, max_output=100_000)
    assert 100_000 < len(out) <= 100_000 + (1 << 16)
    assert out.startswith(b"a line of text\n")
    # a tool that fails within the bound still fails, naming its last line of stderr
    with pytest.raises(ConversionError, match="failed \\(exit 3\\): the last line"):
        await run_tool(["sh", "-c", "echo first >&2; echo the last line >&2; exit 3"],
                       timeout=5, cwd=tmp_path, max_output=100)  # fmt: skip


#: A tool that writes 1 MiB at once into a pipe it has made 1 MiB large (F_SETPIPE_SZ), then
#: waits: asyncio then reads 256 KiB of it in one go.
_ONE_BIG_WRITE = (
    "import fcntl, sys, time; fcntl.fcntl(1, 1031, 1 << 20); "
    "sys.stdout.buffer.write(b'x' * (1 << 20)); sys.stdout.flush(); time.sleep(60)"
)


async def test_a_tool_cut_after_one_big_read_is_not_held_to_its_timeout(tmp_path: Path) -> None:
    """CI once saw the `yes` test above time out. When asyncio reads more than twice its
    stream limit at once it stops reading that pipe until it is read below the limit; the cut
    left it there, and `proc.wait()` (which waits for every pipe's end in Python 3.11) then
    waited for the timeout: half of these runs raised ToolTimeout after 5 s before the fix.
    Now the rest of the pipe is read and dropped after the kill, and each run is cut."""
    from aiserver.documents.conversion import run_tool

    for _ in range(8):
        out = await run_tool([sys.executable, "-c", _ONE_BIG_WRITE], timeout=5, cwd=tmp_path,
                             max_output=100_000)  # fmt: skip
        assert 100_000 < len(out) <= 1 << 20
        assert set(out) == {ord("x")}


#: A tool whose child leaves the tool's process group (a session of its own, which the kill
#: does not reach) and lives on, holding the tool's stdout and stderr; the tool waits.
_ESCAPING_CHILD = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid(); open('child.pid', 'w').write(str(os.getpid())); time.sleep(120)\n"
    "else:\n"
    "    time.sleep(120)\n"
)


async def test_a_timed_out_tool_whose_child_holds_its_pipes_still_ends(tmp_path: Path) -> None:
    """After the timeout's kill, run_tool waited for the tool's exit, which asyncio reports only
    once the tool's pipes have ended: a child of the tool in a session of its own held them, and
    the ToolTimeout with them, for as long as it lived (here 120 s; the run is bounded at 60 s
    below). Now the wait after the kill is bounded (`_OUTLIVE_S`); the pipes end, and are
    closed, once the child is gone."""
    from aiserver.documents.conversion import _OUTLIVE_S, ToolTimeout, run_tool

    open_before = len(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(ToolTimeout, match="python"):
            async with asyncio.timeout(60):
                await run_tool([sys.executable, "-c", _ESCAPING_CHILD], timeout=1, cwd=tmp_path)
    finally:  # the child outlived the kill of the tool's group
        os.kill(int((tmp_path / "child.pid").read_text()), signal.SIGKILL)
    async with asyncio.timeout(_OUTLIVE_S * 4):  # its pipes end with it, and are closed
        while len(os.listdir("/proc/self/fd")) > open_before:
            await asyncio.sleep(0.05)


async def test_the_page_images_together_keep_to_their_budget() -> None:
    """Before, the page images had no total bound: a hostile PDF's pages of noise (some 55 MB
    each as PNG) were all written, read into memory and stored together, gigabytes per
    conversion. Pages past DOCUMENT_MAX_IMAGE_BYTES are not kept now; the text still is."""
    pages = [f"page {n}" for n in range(1, 24)]
    pdf = (await convert(docx(*pages), "docx", LIMITS)).pdf
    every = await convert(pdf, "pdf", Limits(timeout_s=60, max_pages=30, max_text_bytes=10**6,
                                             dpi=40))  # fmt: skip
    assert len(every.pages) == 23  # rendered in three runs of at most 10 pages
    sizes = [len(p) for p in every.pages]
    budget = sum(sizes[:5]) + sizes[5] // 2  # five pages fit, the sixth does not
    kept = await convert(pdf, "pdf", Limits(timeout_s=60, max_pages=30, max_text_bytes=10**6,
                                            dpi=40, max_image_bytes=budget))  # fmt: skip
    assert kept.pages == every.pages[:5]
    assert kept.page_count == 23
    assert "page 23" in kept.text


def unpacking_to(size: int) -> bytes:
    """A DOCX of a few hundred KB whose XML unpacks to `size` bytes (paragraphs, all alike)."""
    paragraph = "<w:p><w:r><w:t>" + "lorem ipsum dolor sit amet " * 20 + "</w:t></w:r></w:p>"
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{paragraph * (size // len(paragraph))}</w:body></w:document>"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _RELS)
        archive.writestr("word/document.xml", document)
    return buffer.getvalue()


async def test_a_docx_that_unpacks_to_too_much_fails_before_libreoffice_starts() -> None:
    """A 344 KB DOCX of 86 MB of XML grew LibreOffice past 686 MB, and on, until its timeout."""
    bomb = unpacking_to(86_000_000)
    assert len(bomb) < 400_000
    with pytest.raises(ConversionError, match=r"^the docx file unpacks to 82 MB, more than 64 MB$"):
        await convert(bomb, "docx", LIMITS)


def with_entries(count: int) -> bytes:
    """A zip file of `count` empty entries, named as a DOCX."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(count):
            archive.writestr(f"e{n}", b"")
    return buffer.getvalue()


def end_record_at(data: bytes, signature: bytes = b"PK\x05\x06") -> int:
    return data.rindex(signature)


@pytest.mark.parametrize("count", [10_001, 70_000])  # the second needs the zip's ZIP64 record
async def test_a_docx_of_too_many_zip_entries_fails_before_its_directory_is_read(
    count: int,
) -> None:
    """250,000 empty entries (a few MB) took 7 s of CPU to list, outside the conversion's
    timeout; the count the zip's end record declares is checked first."""
    with pytest.raises(ConversionError, match=rf"^the file's zip directory declares {count:,} "):
        await convert(with_entries(count), "docx", LIMITS)


async def test_a_forged_entry_count_or_zip64_locator_does_not_get_a_directory_through() -> None:
    """zipfile reads the directory's bytes, whatever count the end record declares: 60,000
    entries declared as 5 are refused by the directory's size. A ZIP64 locator whose offset
    points nowhere is not followed (zipfile does not follow it either): the record before it
    still counts, and the file's size is still checked."""
    forged = bytearray(with_entries(60_000))
    end = end_record_at(forged)  # fewer than 65,535 entries: no ZIP64 record
    forged[end + 8 : end + 12] = (5).to_bytes(2, "little") * 2  # both counts of the end record
    with zipfile.ZipFile(io.BytesIO(bytes(forged))) as archive:
        assert len(archive.infolist()) == 60_000  # what zipfile would have listed
    with pytest.raises(ConversionError, match=r"^the file's zip directory declares 5 entries in "):
        await convert(bytes(forged), "docx", LIMITS)

    nowhere = bytearray(with_entries(70_000))
    locator = end_record_at(nowhere, b"PK\x06\x07")
    nowhere[locator + 8 : locator + 16] = (2**63 + 5).to_bytes(8, "little")
    with pytest.raises(ConversionError, match=r"^the file's zip directory declares 70,000 "):
        await convert(bytes(nowhere), "docx", LIMITS)


def test_the_directory_is_read_from_the_end_record(tmp_path: Path) -> None:
    from aiserver.documents.conversion import _zip_directory

    for count in (0, 1, 3, 65_534, 65_535, 65_536):
        path = tmp_path / f"{count}.docx"
        path.write_bytes(with_entries(count))
        with zipfile.ZipFile(path) as archive:
            listed = len(archive.infolist())
        found = _zip_directory(path)
        assert found is not None
        assert found[0] == listed == count
        assert 46 * count <= found[1] < 60 * count + 1
    for name, data in (("no.docx", b"no zip file at all"), ("empty.docx", b"")):
        (tmp_path / name).write_bytes(data)
        assert _zip_directory(tmp_path / name) is None


async def test_a_tool_cannot_take_more_memory_than_its_bound(tmp_path: Path) -> None:
    """A tool's address space is bounded (RLIMIT_AS): an allocation past it fails, and the
    tool with it, naming the reason."""
    from aiserver.documents.conversion import MAX_TOOL_MEMORY, run_tool

    with pytest.raises(ConversionError, match=r"failed \(exit 1\): MemoryError"):
        await run_tool([sys.executable, "-c", f"bytearray({MAX_TOOL_MEMORY})"],
                       timeout=20, cwd=tmp_path)  # fmt: skip


#: As `_ESCAPING_CHILD`, but the child writes 1 MiB to the tool's stdout 3 s in (after the
#: run has given up on it): more than asyncio reads of a pipe nobody reads from.
_ESCAPING_WRITER = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid(); open('child.pid', 'w').write(str(os.getpid())); time.sleep(3)\n"
    "    sys.stdout.buffer.write(b'x' * (1 << 20)); sys.stdout.flush(); time.sleep(120)\n"
    "else:\n"
    "    time.sleep(120)\n"
)


async def test_a_timed_out_tool_s_pipes_are_closed_also_when_its_child_wrote_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once run_tool gave up waiting for the pipes (`_OUTLIVE_S`), nothing read them: a child
    that wrote on filled asyncio's buffer, whose reading of the pipe then stopped, so the
    pipe's end was never seen, not even once the child was killed, and this process kept
    both pipes open (two descriptors per such conversion, in a runner that lives for weeks).
    Now the pipes are closed when the wait is given up."""
    from aiserver.documents import conversion

    monkeypatch.setattr(conversion, "_OUTLIVE_S", 1.0)
    open_before = len(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(conversion.ToolTimeout):
            await conversion.run_tool([sys.executable, "-c", _ESCAPING_WRITER], timeout=1,
                                      cwd=tmp_path)  # fmt: skip
        await asyncio.sleep(3)  # the child has written (or found the pipe closed)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int((tmp_path / "child.pid").read_text()), signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while len(os.listdir("/proc/self/fd")) > open_before:
                await asyncio.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) == open_before
