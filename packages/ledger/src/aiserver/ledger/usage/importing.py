"""Importing usage from JSON lines: the events of a file recorded a chunk at a time.

    summary = await import_lines(pool, project_id, numbered_lines, recorder=recorder,
                                 catalog=catalog, chunk_size=1000, progress=show)

Each line is one event, as `POST /v1/usage` takes it; a blank line is skipped (and still
counted for the line numbers), and so is a UTF-8 byte order mark at the start of the file. Every
chunk of `chunk_size` events is recorded by `UsageRecorder.record` in its own transaction, so an
import that stops half-way (a crash, the database going away) has kept whole chunks only, and
running it again records exactly what is missing: the events recorded before are duplicates,
which change nothing.

Each line ends as the API answers its event: recorded, duplicate, conflict (its key was recorded
with another payload; nothing changes) or invalid (not JSON, or an event that cannot be
recorded; its problem names the fields). The summary counts them and keeps the first
`MAX_SHOWN` invalid and conflicting lines with their line numbers and problems.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from aiserver.ledger.errors import InvalidEvent
from aiserver.ledger.usage.bodies import decode_items, without_bom

if TYPE_CHECKING:  # the recorder is the caller's: `aiserver-ledger --help` imports no database
    import asyncpg

    from aiserver.costs.catalog import Catalog
    from aiserver.ledger.usage.ingest import UsageRecorder

DEFAULT_CHUNK: Final = 1000
MAX_CHUNK: Final = 10_000
#: Refused lines kept for the summary, of each kind (invalid, conflict).
MAX_SHOWN: Final = 10


class RefusedLine(msgspec.Struct, frozen=True, kw_only=True):
    line: int  # 1-based, in the file as given (blank lines counted)
    id: str | None  # the event's key, where it had a readable one
    problem: dict[str, Any]


class ImportSummary(msgspec.Struct, kw_only=True):
    events: int = 0  # events read (lines that are not blank)
    recorded: int = 0
    duplicate: int = 0
    conflict: int = 0
    invalid: int = 0
    # of the events recorded, those no price valued yet, wholly or in part (they count 0 or
    # less than they cost until a reprice values them)
    unpriced: int = 0
    partially_priced: int = 0
    invalid_lines: list[RefusedLine] = msgspec.field(default_factory=list)
    conflict_lines: list[RefusedLine] = msgspec.field(default_factory=list)
    last_line: int = 0  # the last line of the last chunk recorded

    @property
    def refused(self) -> int:
        return self.invalid + self.conflict


#: The longest line read as an event. No valid event comes near it (its names, tags and counts
#: are bounded: a few KB); a longer line is invalid, and is never held in memory whole.
MAX_LINE: Final = 1024 * 1024


class LongLine(NamedTuple):
    """A line longer than MAX_LINE, passed over as it was read: its length in bytes."""

    length: int


async def import_lines(
    pool: asyncpg.Pool,
    project_id: int,
    lines: Iterable[tuple[int, bytes | LongLine]],
    *,
    recorder: UsageRecorder,
    catalog: Catalog | None,
    why_no_catalog: str = "",
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Record the events of `lines` ((line number, text) pairs) for the project, `chunk_size`
    per transaction; `progress` is called after each chunk's COMMIT with the summary so far."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size: 1 to {MAX_CHUNK}; got {chunk_size}")
    summary = ImportSummary()
    chunk: list[tuple[int, bytes | LongLine]] = []
    first = True
    for number, text in lines:
        if isinstance(text, LongLine):
            first = False
        else:
            if first:  # a byte order mark at the start of the file is no part of its first event
                text, first = without_bom(text), False
            if not text.strip():
                continue
        chunk.append((number, text))
        if len(chunk) == chunk_size:
            await _record(pool, project_id, chunk, recorder, catalog, why_no_catalog, summary)
            chunk = []
            if progress is not None:
                progress(summary)
    if chunk:
        await _record(pool, project_id, chunk, recorder, catalog, why_no_catalog, summary)
        if progress is not None:
            progress(summary)
    return summary


async def _record(
    pool: asyncpg.Pool,
    project_id: int,
    chunk: list[tuple[int, bytes | LongLine]],
    recorder: UsageRecorder,
    catalog: Catalog | None,
    why_no_catalog: str,
    summary: ImportSummary,
) -> None:
    raws = [b"" if isinstance(text, LongLine) else text for _, text in chunk]
    items = decode_items(raws)
    for index, (_, text) in enumerate(chunk):
        if isinstance(text, LongLine):
            items[index] = InvalidEvent(
                f"the line is {text.length:,} bytes long, over the {MAX_LINE:,} any event fits "
                "in: it was not read",
                ["line"],
            )
    report = await recorder.record(
        pool, project_id, items, catalog=catalog, why_no_catalog=why_no_catalog, raws=raws
    )
    summary.events += len(chunk)
    summary.recorded += report.recorded
    summary.duplicate += report.duplicate
    summary.conflict += report.conflict
    summary.invalid += report.invalid
    summary.last_line = chunk[-1][0]
    for (number, _), result in zip(chunk, report.results, strict=True):
        if result.status == "recorded" and result.pricing_status == "unpriced":
            summary.unpriced += 1
        elif result.status == "recorded" and result.pricing_status == "partially_priced":
            summary.partially_priced += 1
        shown = {"invalid": summary.invalid_lines, "conflict": summary.conflict_lines}.get(
            result.status
        )
        if shown is not None and len(shown) < MAX_SHOWN and result.problem is not None:
            shown.append(RefusedLine(line=number, id=result.id, problem=result.problem))
