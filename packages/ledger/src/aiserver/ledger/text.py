"""Text the ledger stores for people and tags: never a control character (NUL among them, which
PostgreSQL cannot store in text); text it writes into a spreadsheet: never a formula; and text
it shows among other text: never reordering what follows it."""

from __future__ import annotations

import re
from typing import Final

# the ledger's modules import it from here
from aiserver.core_db.text import has_control as has_control

#: What a spreadsheet reads as the start of a formula (OWASP, "CSV injection").
FORMULA_START: Final = frozenset("=+-@\t\r")

#: The bidirectional formatting characters that open a run (LRE, RLE, LRO, RLO; LRI, RLI, FSI)
#: and close one (PDF, PDI), Unicode's bidirectional algorithm (UAX #9): the marks (LRM, RLM,
#: ALM) change no text but their own neighbours', and are left out.
_BIDI: Final = re.compile("[\u202a-\u202e\u2066-\u2069\n\r\x1c-\x1e\x85\u2029]")
#: The paragraph separators (class B): each ends every run (rule X8), where the text is drawn as
#: one paragraph apiece; a page may draw them so or not (a newline is a space in HTML's text).
_SEPARATORS: Final = frozenset("\n\r\x1c\x1d\x1e\x85\u2029")
PDF: Final = "\u202c"  # pop directional formatting: closes an embedding or override
PDI: Final = "\u2069"  # pop directional isolate: closes an isolate and all opened in it
_CLOSER: Final = {
    **dict.fromkeys("\u202a\u202b\u202d\u202e", PDF),
    **dict.fromkeys("\u2066\u2067\u2068", PDI),
}


def spreadsheet_safe(cell: str) -> str:
    """A cell of text that a spreadsheet shows as text: one that would start a formula (an event
    key or a tag value such as `=HYPERLINK(...)`, which anyone holding an ingest key can send)
    gets a leading `'`, so that a spreadsheet takes it as text (some show the `'`, some hide
    it). For text only: a number (`-1`) is left to its own column."""
    return "'" + cell if cell[:1] in FORMULA_START else cell


def bidi_closed(text: str) -> str:
    """`text` with the bidirectional embeddings, overrides and isolates it opens and leaves open
    closed at its end (UAX #9, rules X1 to X8), so that it cannot reorder the text shown after
    it: a name such as `report\u202e` in "the budget report\u202e (limit 10 USD)" would
    otherwise draw the rest of the sentence backwards. Names and tags may hold these
    characters (right-to-left text can need them); the dashboard shows every value through
    this. Text without them, nearly all, is answered as it is after one scan.

    A PDF closes the last embedding or override unless an isolate was opened after it; a PDI
    closes the last isolate and whatever was opened in it; one that matches nothing is ignored,
    as the algorithm ignores it. Closers added beyond what is open would be ignored the same
    way, so the count need not allow for the algorithm's depth limit.

    A paragraph separator (U+2029; a newline) ends every run where it is drawn as one, and not
    where it is drawn as a space: the closers serve both readings. First those of the runs
    opened since the last separator (all that can be open where it ended a paragraph; the rest
    then match nothing), then those of what the whole text, read as one paragraph, leaves
    open after them. Without this, `\u2067a\u2029\u202eb\u2069` read as closed: its PDI
    closes the isolate in one paragraph, but matches nothing after the separator, which leaves
    the override open."""
    if text.isascii() or _BIDI.search(text) is None:  # ASCII: no bidirectional control
        return text
    found = _BIDI.findall(text)
    last = max((i for i, char in enumerate(found) if char in _SEPARATORS), default=None)
    if last is None:
        return text + "".join(reversed(_open(found)))
    closers = "".join(reversed(_open(found[last + 1 :])))
    whole = _open([*found, *closers])
    return text + closers + "".join(reversed(whole))


def _open(controls: list[str] | str) -> list[str]:
    """What closes each run `controls` (formatting characters in order) leave open, innermost
    last; paragraph separators are passed over (`bidi_closed` reads them)."""
    open_closers: list[str] = []
    for char in controls:
        if char == PDF:
            if open_closers and open_closers[-1] == PDF:
                open_closers.pop()
        elif char == PDI:
            if PDI in open_closers:
                while open_closers.pop() != PDI:
                    pass
        elif char in _CLOSER:
            open_closers.append(_CLOSER[char])
    return open_closers
