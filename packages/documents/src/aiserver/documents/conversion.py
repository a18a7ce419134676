"""Document conversion: office formats to PDF with LibreOffice, then text, page count and page
images with poppler.

Every tool runs in its own process group with a timeout; on timeout the whole group is killed
(soffice starts helpers of its own). Each runs under coreutils' `timeout` too, which kills the
group a few seconds after that deadline should the task runner be gone (killed mid-conversion).
Each LibreOffice run gets a private profile directory, so concurrent conversions never share
one. The limits protect the worker: time, pages rendered and text kept (`Limits`), and the
pixels of a page image (`MAX_PAGE_PIXELS`); `aiserver.documents.service` bounds the conversions
at once.

A document comes from anyone who can reach the API, so LibreOffice must read nothing but the
document itself. By default it loads what a document links to (an image by URL in a DOCX or ODT
is fetched when the page is laid out): a request from the task runner to any address the
uploader names, internal ones included, with the answer drawn into the results. Each profile
starts with `_PROFILE_SETTINGS`, which blocks linked resources, never updates links, and runs
no macros. Nor does a tool get this process's secrets: its environment is `tool_environment`.
And LibreOffice reads a document only as its kind (`_IMPORT_FILTERS`): left to guess from the
content, it opened HTML named .doc, .docx, .odt or .rtf with its HTML importer, which fetches a
page's background image (`file://` ones too) whatever the profile says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import struct
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiserver.documents.errors import ConversionError, ToolTimeout
from aiserver.documents.kinds import OFFICE_KINDS, Kind
from aiserver.documents.limits import Limits

_PAGES: Final = re.compile(rb"^Pages:\s+(\d+)\s*$", re.MULTILINE)
_NUMBER: Final = rb"([\d.]+(?:e[+-]?\d+)?)"  # as C printf %g writes it
_PAGE_SIZE: Final = re.compile(
    rb"^Page\s+(\d+) size:\s+" + _NUMBER + rb" x " + _NUMBER + rb" pts", re.MULTILINE
)

#: Each conversion's work directory (the document, the LibreOffice profile, the outputs) is a
#: temporary directory named with this prefix, removed when the conversion ends.
WORKDIR_PREFIX: Final = "aiserver-doc-"
#: How much older than the conversion timeout a work directory must be to be swept.
_SWEEP_MARGIN_S: Final = 300.0


def sweep_workdirs(timeout_s: float, root: Path | None = None) -> int:
    """Remove the work directories that conversions left behind when their task runner was
    killed mid-conversion (nothing else removes them), from `root` (the temporary directory):
    those last changed more than `timeout_s` (the conversion timeout, all tools together) and
    a margin ago. A conversion still running, here or in another task runner sharing the
    directory, is younger than that. Returns how many were removed.

    A task runner sweeps when it starts and as each conversion begins: a runner killed
    mid-conversion and started again at once finds its directory too young at its start, and
    a sweep at starts alone left it until the next one, however far off."""
    base = Path(tempfile.gettempdir()) if root is None else root
    oldest = time.time() - timeout_s - _SWEEP_MARGIN_S
    removed = 0
    for path in base.glob(f"{WORKDIR_PREFIX}*"):
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_mtime > oldest:
                continue
            shutil.rmtree(path)
        except OSError:  # gone meanwhile, or not ours to remove: left alone
            continue
        removed += 1
    return removed


#: The longest side of a page image, in pixels. A PDF can declare a page of any size, and
#: pdftoppm draws each page whole in memory: at the render resolution a page of 14,400 points
#: took 1.5 GB, and a larger one came out as a single pixel. A page that would be larger than
#: this is rendered at the resolution that makes it fit (A0 at the default 100 dpi fits). The
#: size is the crop box's, which pdfinfo reports and pdftoppm renders (with -cropbox): without
#: it, pdftoppm drew the media box, and a page cropped to 72 points of a 14,400-point one came
#: out at 20,000 pixels a side.
MAX_PAGE_PIXELS: Final = 5000

#: LibreOffice settings of every conversion's profile (its `registrymodifications.xcu`):
#: - BlockUntrustedRefererLinks: no resource a document links to is loaded (images by URL);
#: - Writer's Update/Link 0: links (sections, fields, OLE) are never updated from their source;
#: - no macro runs (the highest security level, and execution disabled).
_PROFILE_SETTINGS: Final = """\
<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry"
 xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="BlockUntrustedRefererLinks" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="DisableMacrosExecution" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel" oor:op="fuse"><value>3</value></prop></item>
<item oor:path="/org.openoffice.Office.Writer/Content/Update"><prop oor:name="Link" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"""  # noqa: E501


#: The LibreOffice import filter of each office kind (soffice's --infilter). Without one,
#: LibreOffice picks its importer by the content, whatever the extension: HTML uploaded as .doc,
#: .docx, .odt or .rtf went to the HTML importer, and a `<body background="http://...">` or
#: `"file:///..."` was fetched and drawn into the results (BlockUntrustedRefererLinks does not
#: cover it). With the kind's filter, such a file fails to load (or, as RTF, loads as no text).
_IMPORT_FILTERS: Final[Mapping[str, str]] = {
    "doc": "MS Word 97",
    "docx": "MS Word 2007 XML",
    "odt": "writer8",
    "rtf": "Rich Text Format",
    "txt": "Text (encoded):UTF8",  # a BOM still wins (UTF-16 text is read as such)
}


@dataclass(frozen=True, slots=True)
class Converted:
    pdf: bytes
    page_count: int
    text: str
    text_truncated: bool
    pages: list[bytes]


#: The variables of this process's environment that a tool gets, where set: the tools parse
#: documents from anyone, so they see none of the rest (DATABASE_URL, WEBHOOK_SECRET_KEYS,
#: REDIS_URL, tokens). PATH finds the tools (soffice's script runs others); the locale and time
#: zone are how LibreOffice lays out text, numbers and dates.
_TOOL_VARIABLES: Final = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ")


def tool_environment(work: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a tool run in `work`: `_TOOL_VARIABLES` from `environ` (this
    process's environment by default), and HOME and TMPDIR in the work directory, so that
    LibreOffice's profile and temporary files (killed, it leaves lu*.tmp directories) go with
    it when it is removed."""
    source = os.environ if environ is None else environ
    env = {name: source[name] for name in _TOOL_VARIABLES if name in source}
    env.setdefault("PATH", os.defpath)
    return env | {"HOME": str(work), "TMPDIR": str(work)}


#: A tool runs under coreutils' `timeout`, set this much later than our own deadline: it
#: kills the tool's process group when the task runner that started it cannot (it was killed,
#: or is stuck), so that a tool never outlives its conversion by more than this.
_OUTLIVE_S: Final = 5.0


#: The address space of a tool (RLIMIT_AS, for it and the processes it starts): a 344 KB DOCX
#: that unpacks to 86 MB of XML grew LibreOffice past 686 MB, and on; with this bound an
#: allocation fails, and the tool with it, before it can take the worker's memory. LibreOffice
#: maps much more than it uses: a one-page DOCX needs some 400 MB of address space.
MAX_TOOL_MEMORY: Final = 2 * 1024**3
#: The bytes an office document's zip entries may unpack to together (DOCX and ODT are zip
#: files): LibreOffice holds a document's XML many times over in memory, and an upload of a few
#: hundred KB can unpack to gigabytes. The entries' declared sizes are checked before soffice
#: starts (what an entry really unpacks to is zlib's and LibreOffice's to bound).
MAX_UNPACKED_BYTES: Final = 64 * 1024 * 1024


def _memory_bound() -> Callable[[], None]:
    """What the tool's process runs before it starts the tool: `MAX_TOOL_MEMORY` as its
    RLIMIT_AS (or this process's own hard limit, where that is lower)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    bound = MAX_TOOL_MEMORY if hard == resource.RLIM_INFINITY else min(MAX_TOOL_MEMORY, hard)

    def bind() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (bound, bound))

    return bind


#: What an office document's zip directory may hold: a DOCX or ODT holds some tens of entries in
#: some KB. Reading a zip's directory costs CPU by the entry (250,000 empty entries, a few MB,
#: took 7 s), so the count and the size that its end record declares are checked first.
MAX_ZIP_ENTRIES: Final = 10_000
MAX_ZIP_DIRECTORY_BYTES: Final = 1024 * 1024
_END_RECORD: Final = struct.Struct("<4s4H2LH")  # the zip's end of central directory record
_ZIP64_LOCATOR: Final = struct.Struct("<4sLQL")
_ZIP64_END_RECORD: Final = struct.Struct("<4sQ2H2L4Q")


def _zip_directory(document: Path) -> tuple[int, int] | None:
    """(entries, bytes) of a zip file's directory as its end record declares them, found as
    Python's zipfile finds them (the record at the very end, else the last one in the 64 KB a
    comment may take; its ZIP64 record where the locator right before it says so), so that
    zipfile reads no more than this; None when there is no end record, or it cannot be read
    (zipfile is then left to say so)."""
    try:
        with document.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            tail_size = min(size, _END_RECORD.size + 65_535)
            file.seek(size - tail_size)
            tail = file.read(tail_size)
            at = len(tail) - _END_RECORD.size
            if not (at >= 0 and tail[at : at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
                at = tail.rfind(b"PK\x05\x06")
                if at < 0 or len(tail) - at < _END_RECORD.size:
                    return None
            record = _END_RECORD.unpack_from(tail, at)
            entries, directory = record[4], record[5]
            end_at = size - tail_size + at  # in the file
            locator_at = end_at - _ZIP64_LOCATOR.size
            if locator_at - _ZIP64_END_RECORD.size < 0:
                return entries, directory
            file.seek(locator_at - _ZIP64_END_RECORD.size)
            zip64 = file.read(_ZIP64_END_RECORD.size + _ZIP64_LOCATOR.size)
    except OSError:
        return None
    if zip64[_ZIP64_END_RECORD.size : _ZIP64_END_RECORD.size + 4] != b"PK\x06\x07":
        return entries, directory
    found = _ZIP64_END_RECORD.unpack_from(zip64)
    if found[0] != b"PK\x06\x06":
        return entries, directory
    return found[7], found[8]


def _unpacked_size(document: Path) -> int | None:
    """What a zip file's entries declare they unpack to together; None when it is no zip file
    (LibreOffice then says it cannot convert it). `ConversionError` for a directory of more
    than `MAX_ZIP_ENTRIES` entries or `MAX_ZIP_DIRECTORY_BYTES`, before it is read."""
    directory = _zip_directory(document)
    if directory is not None:
        entries, size = directory
        if entries > MAX_ZIP_ENTRIES or size > MAX_ZIP_DIRECTORY_BYTES:
            raise ConversionError(
                f"the file's zip directory declares {entries:,} entries in {size:,} bytes, more "
                f"than {MAX_ZIP_ENTRIES:,} entries or {MAX_ZIP_DIRECTORY_BYTES:,} bytes: it is no "
                "office document this converts"
            )
    try:
        with zipfile.ZipFile(document) as archive:
            return sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _command(name: str) -> str:
    """The path of a command; `ConversionError` naming it when it is not installed."""
    found = shutil.which(name)
    if found is None:
        raise ConversionError(f"{name} is not installed on the task runner")
    return found


#: What is kept of a tool's stdout (its end) when the caller names no bound of its own.
_MAX_STDOUT: Final = 1024 * 1024


async def run_tool(
    args: list[str],
    *,
    timeout: float,
    cwd: Path,
    max_output: int | None = None,
    keep: int = _MAX_STDOUT,
) -> bytes:
    """Run a tool; return its stdout. Kill its whole process group when `timeout` passes; and
    should this process be gone by then, coreutils' `timeout` (`gtimeout` where coreutils come
    with a g, as from Homebrew) kills it a few seconds later. With `max_output`, the tool is
    killed once its stdout has passed that many bytes, and what it wrote so far (more than
    `max_output` bytes: the caller sees it was cut) is the answer: a small PDF can hold
    gigabytes of text, which must never all be in this process's memory. Without it, the answer
    is the last `keep` bytes of stdout (what came before is read and dropped). Of stderr only
    the end is kept (`_MAX_STDERR`): a PDF of 29 KB made pdftoppm write 436 MB of errors, which
    were all held here. The tool's address space is bounded (`MAX_TOOL_MEMORY`)."""
    killer = shutil.which("timeout") or shutil.which("gtimeout")
    if killer is None:
        raise ConversionError("coreutils' timeout is not installed on the task runner")
    proc = await asyncio.create_subprocess_exec(
        killer,
        "--signal=KILL",
        f"{timeout + _OUTLIVE_S:.3f}",
        _command(args[0]),
        *args[1:],
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=tool_environment(cwd),  # no secret of this process
        preexec_fn=_memory_bound(),
    )
    cut = False
    try:
        async with asyncio.timeout(timeout):
            out, err, cut = await _bounded_output(proc, max_output, keep)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await _ended(proc)
        raise ToolTimeout(Path(args[0]).name) from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode != 0 and not cut:
        reason = err.decode("utf-8", "replace").strip().splitlines()
        raise ConversionError(
            f"{Path(args[0]).name} failed (exit {proc.returncode}): "
            + (reason[-1] if reason else "no message")
        )
    return out


#: What is kept of a tool's stderr (its end): its last line is the reason a failure gives.
_MAX_STDERR: Final = 64 * 1024


async def _tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    """Read `stream` to its end (a tool never blocks on a full pipe), keeping its last `keep`
    bytes (what came before is dropped as it comes, never held all at once)."""
    kept = bytearray()
    while chunk := await stream.read(1 << 16):
        kept += chunk
        if len(kept) > 2 * keep + (1 << 16):
            del kept[: len(kept) - keep]
    return bytes(kept[max(0, len(kept) - keep) :])


async def _head(proc: asyncio.subprocess.Process, limit: int) -> tuple[bytes, bool]:
    """The tool's stdout up to just past `limit` bytes (then its process group is killed), and
    whether it was cut."""
    assert proc.stdout is not None  # piped by run_tool
    chunks: list[bytes] = []
    size = 0
    while chunk := await proc.stdout.read(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            # Read what is left to the pipe's end, dropping it: asyncio counts the process
            # done (`proc.wait()`) only once every pipe has ended, and a pipe whose reader
            # holds more than its limit unread stops being read, so it never would. One read
            # of a pipe being written meanwhile can be 256 KiB, so this happened (a tool cut
            # at 100 KB was then held to its timeout, as if it had hung).
            while await proc.stdout.read(1 << 16):
                pass
            return b"".join(chunks), True
    return b"".join(chunks), False


async def _bounded_output(
    proc: asyncio.subprocess.Process, limit: int | None, keep: int
) -> tuple[bytes, bytes, bool]:
    """The tool's stdout (up to just past `limit` bytes, or else its last `keep`), the end of
    its stderr, and whether stdout was cut at `limit`."""
    assert proc.stdout is not None  # both piped by run_tool
    assert proc.stderr is not None
    errors = asyncio.ensure_future(_tail(proc.stderr, _MAX_STDERR))
    try:
        if limit is None:
            out, cut = await _tail(proc.stdout, keep), False
        else:
            out, cut = await _head(proc, limit)
        err = await errors
        await proc.wait()
    finally:
        errors.cancel()
        await asyncio.wait([errors])  # stderr has no other reader once this returns
    return out, err, cut


async def _ended(proc: asyncio.subprocess.Process) -> None:
    """After a timed-out tool's process group was killed: its pipes read to their end (what is
    left is dropped) and its exit, waited for at most `_OUTLIVE_S` (then its pipes are closed).
    asyncio counts a process done only once its pipes have ended, and a process the tool
    started in a session of its own (which the kill does not reach) can hold them open: a
    tool's child that did so held the timeout's error for as long as it lived (coreutils'
    `timeout` kills only the tool)."""
    assert proc.stdout is not None  # both piped by run_tool
    assert proc.stderr is not None

    async def drop(stream: asyncio.StreamReader) -> None:
        while await stream.read(1 << 16):
            pass

    try:
        async with asyncio.timeout(_OUTLIVE_S):
            await asyncio.gather(drop(proc.stdout), drop(proc.stderr))
            await proc.wait()
    except TimeoutError:
        # Given up: nothing reads the pipes any more, and asyncio stops reading one that such
        # a child fills, so its end would never be seen, not even once the child is gone, and
        # the pipes stayed open in this process. Closed now (the child's writes fail).
        proc._transport.close()  # type: ignore[attr-defined]  # (the process's own)


def _info_bytes(max_pages: int) -> int:
    """What is kept of pdfinfo's answer, its end: the lines read here come last (the page
    count, then two lines for each page asked for and three more, each well under 256 bytes),
    after the document's metadata, which can be of any length (a Title of 200 MB, compressed
    in a PDF of 389 KB, was printed whole)."""
    return 64 * 1024 + 256 * max_pages


def _write_profile(profile: Path) -> None:
    """A new LibreOffice profile holding `_PROFILE_SETTINGS` (LibreOffice adds the rest)."""
    settings = profile / "user" / "registrymodifications.xcu"
    settings.parent.mkdir(parents=True)
    settings.write_text(_PROFILE_SETTINGS, encoding="utf-8")


def _truncate_utf8(text: bytes, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text.decode("utf-8", "replace"), False
    return text[:limit].decode("utf-8", "ignore"), True


#: Pages one pdftoppm run renders at most: after each run the images' bytes are counted, so a
#: hostile PDF (pages of noise, some 55 MB each as PNG) overshoots the budget by one run at most.
_RENDER_CHUNK: Final = 10


def _render_runs(info: bytes, rendered: int, dpi: int) -> list[tuple[int, int, float]]:
    """The pdftoppm runs for pages 1 to `rendered` (their sizes from pdfinfo's `info`): first
    page, last page and resolution, each run a stretch of at most `_RENDER_CHUNK` pages at one
    resolution."""
    longest = {int(n): max(float(w), float(h)) for n, w, h in _PAGE_SIZE.findall(info)}
    runs: list[tuple[int, int, float]] = []
    for page in range(1, rendered + 1):
        side = longest.get(page, 0.0)
        resolution = float(dpi)
        if side * dpi / 72 > MAX_PAGE_PIXELS:  # a hair under the bound, against rounding up
            resolution = MAX_PAGE_PIXELS * 72 / side * (1 - 1e-6)
        if runs and runs[-1][2] == resolution and page - runs[-1][0] < _RENDER_CHUNK:
            runs[-1] = (runs[-1][0], page, resolution)
        else:
            runs.append((page, page, resolution))
    return runs


def _page_files(work: Path) -> list[Path]:
    """pdftoppm's page-1.png (or page-01.png, ...) files, in page order."""
    return sorted(work.glob("page-*.png"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def _images_size(work: Path) -> int:
    return sum(p.stat().st_size for p in _page_files(work))


def _read_pages(work: Path, budget: int) -> list[bytes]:
    """The page images in page order, as many as fit in `budget` bytes together: the first
    page that would pass it, and every page after it, are left out."""
    pages: list[bytes] = []
    used = 0
    for path in _page_files(work):
        size = path.stat().st_size
        if used + size > budget:
            break
        pages.append(path.read_bytes())
        used += size
    return pages


async def convert(source: bytes, kind: Kind, limits: Limits) -> Converted:
    """Convert one document in a private temporary directory. Raises `ConversionError`."""
    try:
        return await _convert(source, kind, limits)
    except ToolTimeout as exc:
        raise ConversionError(
            f"the conversion took longer than {limits.timeout_s:g} s "
            f"(DOCUMENT_CONVERSION_TIMEOUT_SECONDS); {exc.tool} was killed"
        ) from None


async def _convert(source: bytes, kind: Kind, limits: Limits) -> Converted:
    deadline = time.monotonic() + limits.timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ToolTimeout("the conversion")
        return left

    # what conversions of a task runner killed since it started left (its start sweeps only
    # those older than any conversion, not those of the kill that restarted it)
    await asyncio.to_thread(sweep_workdirs, limits.timeout_s)
    with tempfile.TemporaryDirectory(prefix=WORKDIR_PREFIX) as tmp:
        work = Path(tmp)
        original = work / f"input.{kind}"
        await asyncio.to_thread(original.write_bytes, source)
        if kind in OFFICE_KINDS:
            unpacked = await asyncio.to_thread(_unpacked_size, original)
            if unpacked is not None and unpacked > MAX_UNPACKED_BYTES:
                raise ConversionError(
                    f"the {kind} file unpacks to {unpacked / 2**20:.0f} MB, more than "
                    f"{MAX_UNPACKED_BYTES / 2**20:.0f} MB"
                )
            out_dir = work / "out"
            profile = work / "lo-profile"  # private: concurrent conversions never share one
            await asyncio.to_thread(_write_profile, profile)
            await run_tool(
                ["soffice", "--headless", "--norestore", "--nolockcheck", "--nodefault",
                 f"-env:UserInstallation={profile.as_uri()}",
                 f"--infilter={_IMPORT_FILTERS[kind]}", "--convert-to", "pdf",
                 "--outdir", str(out_dir), str(original)],
                timeout=remaining(), cwd=work,
            )  # fmt: skip
            pdf_path = out_dir / "input.pdf"
            if not await asyncio.to_thread(pdf_path.exists):
                raise ConversionError(
                    f"LibreOffice could not convert the {kind} file (corrupt, unsupported, or "
                    f"not in the {kind.upper()} format)"
                )
        else:
            pdf_path = original
        try:
            info = await run_tool(
                ["pdfinfo", "-f", "1", "-l", str(limits.max_pages), str(pdf_path)],
                timeout=remaining(), cwd=work, keep=_info_bytes(limits.max_pages),
            )  # fmt: skip
        except ConversionError as exc:
            if "password" in str(exc).lower():
                raise ConversionError("the PDF is password-protected") from None
            raise ConversionError(f"not a readable PDF: {exc}") from None
        # pdfinfo writes the document's metadata (Title, Author, ...: any text, newlines kept)
        # before its own Pages line, and only its own lines after it: a Title of "x\nPages: 0"
        # forged the count when the first such line was read. The last one is pdfinfo's.
        found = list(_PAGES.finditer(info))
        if not found:
            raise ConversionError("not a readable PDF: pdfinfo reports no page count")
        page_count = int(found[-1].group(1))
        info = info[found[-1].end() :]  # the page sizes, past anything the document wrote
        text_bytes = await run_tool(
            ["pdftotext", "-layout", "-enc", "UTF-8", str(pdf_path), "-"],
            timeout=remaining(), cwd=work, max_output=limits.max_text_bytes,
        )  # fmt: skip
        text, truncated = _truncate_utf8(text_bytes, limits.max_text_bytes)
        rendered = min(page_count, limits.max_pages)
        pages: list[bytes] = []
        if rendered:
            for first, last, resolution in _render_runs(info, rendered, limits.dpi):
                await run_tool(
                    ["pdftoppm", "-png", "-cropbox", "-r", repr(resolution), "-f", str(first),
                     "-l", str(last), str(pdf_path), str(work / "page")],
                    timeout=remaining(), cwd=work,
                )  # fmt: skip
                if await asyncio.to_thread(_images_size, work) > limits.max_image_bytes:
                    break  # the pages rendered so far hold the budget already
            pages = await asyncio.to_thread(_read_pages, work, limits.max_image_bytes)
        return Converted(
            pdf=await asyncio.to_thread(pdf_path.read_bytes),
            page_count=page_count,
            text=text,
            text_truncated=truncated,
            pages=pages,
        )
