"""What a tool writes is kept to a bound in the task runner's memory, whatever the document makes
it write.

A tool's stderr (and the stdout of every tool but pdftotext) was read whole into the task
runner: a PDF of 29 KB whose content stream repeats an unknown operator made pdftoppm write
436 MB of "Syntax Error" lines, and a PDF of 389 KB whose metadata (an object stream, compressed)
holds a Title of 200 MB made pdfinfo print 400 MB; the conversion took 400 and 800 MB of the task
runner's memory, two conversions at once twice that. Now only a tool's last bytes are kept
(pdfinfo prints what the conversion reads, the page count and the page sizes, last).

Each conversion runs in a child process here, which reports its peak memory (VmHWM: that of
its own program, where `ru_maxrss` would count the memory of the test process it was forked
from).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

from .test_conversion import tools_present  # noqa: F401  (the tools' check, reused)

#: What a child that converted one document may have taken at its peak: its interpreter and
#: imports take some 40 MB; the outputs of this file's tools, read whole, took 150 MB and more.
MAX_RSS_MB = 100


def _in_a_child(code: str, tmp_path: Path) -> dict[str, object]:
    """Run `code` (it sets `answer`) in a new interpreter; its answer and peak memory in MB
    (Linux's /proc)."""
    script = (
        textwrap.dedent(
            """
        import asyncio, json, pathlib, sys
        from aiserver.documents.conversion import convert, run_tool
        from aiserver.documents.errors import ConversionError
        from aiserver.documents.limits import Limits
        tmp = pathlib.Path(sys.argv[1])
        """
        )
        + textwrap.dedent(code)
        + textwrap.dedent(
            """
        status = pathlib.Path("/proc/self/status").read_text()
        answer["rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
        print(json.dumps(answer))
        """
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_a_tool_that_writes_hundreds_of_mb_of_errors_is_kept_to_their_end(tmp_path: Path) -> None:
    """200 MB on stderr, then the reason (its last line) and a failure: the reason is the
    error's, and the task runner held the end of it only."""
    answer = _in_a_child(
        """
        noisy = ("yes 'Syntax Error (1000): Unknown operator xx' | head -c 200000000 >&2; "
                 "echo >&2; echo the last line >&2; exit 3")
        try:
            asyncio.run(run_tool(["sh", "-c", noisy], timeout=120, cwd=tmp))
            answer = {"error": None}
        except ConversionError as exc:
            answer = {"error": str(exc)}
        """,
        tmp_path,
    )
    assert answer["error"] == "sh failed (exit 3): the last line"
    assert isinstance(answer["rss_mb"], float)
    assert answer["rss_mb"] < MAX_RSS_MB


def _pdf_with_a_long_title(length: int) -> bytes:
    """A one-page PDF 1.5 whose Info dictionary (Title and Author, `length` bytes each) is in
    a compressed object stream: a few hundred KB that pdfinfo prints as 2 x `length` bytes."""
    text = b"BT /F1 24 Tf 72 700 Td (Hello long title) Tj ET"
    plain = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.5\n")
    offsets = []
    for number, body in enumerate(plain, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    header = b"7 0 "  # object 7, the Info dictionary, at offset 0 of the stream
    packer = zlib.compressobj(9)
    packed = packer.compress(header)
    packed += packer.compress(b"<< /Title (" + b"A" * length + b") /Author (" + b"B" * length)
    packed += packer.compress(b") >>") + packer.flush()
    offsets.append(len(out))  # object 6, the object stream
    out += (
        b"6 0 obj\n<< /Type /ObjStm /N 1 /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
        % (len(header), len(packed))
        + packed
        + b"\nendstream\nendobj\n"
    )
    xref = len(out)  # object 8, the cross-reference stream
    rows = [b"\x00\x00\x00\x00\xff\xff"]
    rows += [b"\x01" + offset.to_bytes(4, "big") + b"\x00" for offset in offsets]
    rows += [
        b"\x02" + (6).to_bytes(4, "big") + b"\x00",
        b"\x01" + xref.to_bytes(4, "big") + b"\x00",
    ]
    table = b"".join(rows)
    out += (
        b"8 0 obj\n<< /Type /XRef /Size 9 /W [1 4 1] /Root 1 0 R /Info 7 0 R /Length %d >>\n"
        b"stream\n" % len(table) + table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref
    )
    return bytes(out)


def test_a_pdfs_metadata_cannot_take_the_task_runners_memory(tmp_path: Path) -> None:
    """pdfinfo prints the metadata before the page count and sizes: 120 MB of it here, from a
    PDF of some 120 KB. The PDF converts, and the task runner kept only pdfinfo's last lines."""
    pdf = _pdf_with_a_long_title(60_000_000)
    assert len(pdf) < 400_000
    (tmp_path / "long-title.pdf").write_bytes(pdf)
    answer = _in_a_child(
        """
        source = (tmp / "long-title.pdf").read_bytes()
        limits = Limits(timeout_s=240, max_pages=5, max_text_bytes=100_000, dpi=30)
        converted = asyncio.run(convert(source, "pdf", limits))
        answer = {"pages": converted.page_count, "rendered": len(converted.pages),
                  "text": converted.text.strip()}
        """,
        tmp_path,
    )
    assert (answer["pages"], answer["rendered"], answer["text"]) == (1, 1, "Hello long title")
    assert isinstance(answer["rss_mb"], float)
    assert answer["rss_mb"] < MAX_RSS_MB
