"""A page far larger than paper is rendered within a bound of pixels, not at any size it asks.

A PDF of a few hundred bytes can declare a page of 100,000 x 100,000 points. At the render
resolution that asked pdftoppm for an image of 138,889 pixels a side: poppler gave up on it and
wrote a 1 x 1 pixel page, while a page just small enough for poppler (14,400 points, the most
the PDF standard allows) took 1.5 GB of memory and 12 s, for each page rendered.
"""

from __future__ import annotations

import struct

import pytest

from aiserver.documents.conversion import MAX_PAGE_PIXELS, convert
from aiserver.documents.limits import Limits

from .test_conversion import tools_present  # noqa: F401  (the tools' check, reused)


def pdf(
    *sizes: tuple[int, int], crop_box: tuple[int, int] | None = None, title: bytes = b""
) -> bytes:
    """A PDF with one page of each (width, height) in points, each with a line of text; with
    `crop_box`, each page is cropped to that (width, height) from its lower left corner; with
    `title`, that is the document's Title (metadata: a PDF string, newlines as they are)."""
    crop = b"" if crop_box is None else b"/CropBox [0 0 %d %d] " % crop_box
    info = b"/Info << /Title (%s) >> " % title if title else b""
    text = b"BT /F1 24 Tf 72 72 Td (Hello page) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % (5 + n) for n in range(len(sizes)))
        + b"] /Count %d >>" % len(sizes),
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] %s/Contents 3 0 R "
            b"/Resources << /Font << /F1 4 0 R >> >> >>" % (*size, crop)
            for size in sizes
        ),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        info,
        xref,
    )
    return bytes(out)


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


LIMITS = Limits(timeout_s=120, max_pages=10, max_text_bytes=100_000, dpi=72)


@pytest.mark.parametrize(
    "size",
    [(100_000, 100_000), (14_400, 14_400), (20_000, 300), (1_000_000, 2_000_000)],
    ids=["huge", "largest", "long", "in-exponent-notation"],
)
async def test_a_huge_page_is_rendered_within_the_pixel_bound(size: tuple[int, int]) -> None:
    converted = await convert(pdf((612, 792), size, (612, 792)), "pdf", LIMITS)
    assert converted.page_count == 3
    assert [png_size(page) for page in converted.pages[::2]] == [(612, 792), (612, 792)]
    width, height = png_size(converted.pages[1])
    assert max(width, height) <= MAX_PAGE_PIXELS  # smaller than asked, but whole
    assert max(width, height) >= MAX_PAGE_PIXELS * 0.99
    assert abs(width / height - size[0] / size[1]) < 0.05 * size[0] / size[1]


async def test_a_page_cropped_small_is_rendered_as_cropped_not_at_its_media_box() -> None:
    """pdfinfo measures a page by its crop box, and pdftoppm drew its media box: a page of
    14,400 points cropped to 72 was rendered at 20,000 pixels a side (1.5 GB, 11 s), past the
    bound. It is rendered as cropped now, the size that was measured."""
    converted = await convert(pdf((14_400, 14_400), crop_box=(72, 72)), "pdf", LIMITS)
    assert converted.page_count == 1
    width, height = png_size(converted.pages[0])
    assert max(width, height) <= MAX_PAGE_PIXELS
    assert (width, height) == (72, 72)  # at 72 dpi, as the crop box


async def test_the_metadata_cannot_forge_the_page_count_or_the_page_sizes() -> None:
    """pdfinfo writes the Title (any text, newlines kept) before its own lines, and the first
    "Pages:" line was taken: this Title made a 3-page PDF one of 0 pages, none rendered."""
    forged = b"Report\nPages:           0\nPage    2 size:  72 x 72 pts\nx"
    converted = await convert(
        pdf((612, 792), (100_000, 100_000), (612, 792), title=forged), "pdf", LIMITS
    )
    assert converted.page_count == 3
    assert len(converted.pages) == 3
    assert max(png_size(converted.pages[1])) <= MAX_PAGE_PIXELS
