"""`bidi_closed`: the bidirectional runs a value opens and leaves open are closed at its end, by
the rules of Unicode's bidirectional algorithm (UAX #9, X1 to X8); nothing else changes. The
dashboard's browser test (tests/ui/test_bidi.py) checks what a browser draws from it."""

from __future__ import annotations

import pytest

from aiserver.ledger.text import PDF, PDI, bidi_closed

LRE, RLE, LRO, RLO = "\u202a", "\u202b", "\u202d", "\u202e"
LRI, RLI, FSI = "\u2066", "\u2067", "\u2068"
RLM = "\u200f"


def test_text_without_runs_is_the_same_object() -> None:
    for text in ("", "Monthly cap", "עברית", f"marks only {RLM}", "a\u200eb"):
        assert bidi_closed(text) is text


@pytest.mark.parametrize(
    ("text", "added"),
    [
        # each opener left open gets its closer: an embedding or override a PDF, an isolate a PDI
        (f"{RLO}tset", PDF),
        (f"a{LRE}b{RLE}c", PDF + PDF),
        (f"x{LRO}y", PDF),
        (f"{RLI}name", PDI),
        (f"{LRI}a{FSI}b", PDI + PDI),
        # closed innermost first
        (f"{RLI}a{RLO}b", PDF + PDI),
        (f"{RLO}a{RLI}b", PDI + PDF),
        # already closed: nothing added
        (f"{RLO}tset{PDF}", ""),
        (f"{RLI}a{PDI}", ""),
        # a PDI closes its isolate and every run opened in it
        (f"{RLI}a{RLO}b{PDI}", ""),
        (f"{RLO}a{RLI}b{RLE}c{PDI}", PDF),
        # a PDF does not close an isolate, nor an override opened outside the isolate on top
        (f"{RLI}a{PDF}", PDI),
        (f"{RLO}a{RLI}b{PDF}", PDI + PDF),
        # closers that match nothing are ignored, as the algorithm ignores them
        (f"{PDF}{PDI}a", ""),
        (f"{PDI}{RLO}a", PDF),
        (f"{RLO}a{PDI}", PDF),
    ],
)
def test_open_runs_are_closed_at_the_end(text: str, added: str) -> None:
    assert bidi_closed(text) == text + added


def test_closing_twice_adds_nothing() -> None:
    for text in (f"{RLI}a{RLO}b", f"{RLO}{RLO}{RLO}x", f"{LRI}{PDF}{RLE}"):
        once = bidi_closed(text)
        assert once != text
        assert bidi_closed(once) == once


def test_deep_nesting_is_closed_whole() -> None:
    """Past the algorithm's depth (125) openers are counted, not pushed; one closer per opener
    still closes them all, since a closer beyond what is open is ignored."""
    text = (RLO + LRI) * 200 + "x"
    closed = bidi_closed(text)
    assert closed == text + (PDI + PDF) * 200


PS = "\u2029"


@pytest.mark.parametrize(
    ("text", "added"),
    [
        # drawn as one paragraph each, the PDI matches nothing past the separator: the override
        # stays open; drawn as one, the PDI closed it with the isolate
        (f"{RLI}a{PS}{RLO}b{PDI}", PDF),
        # each reading's runs closed: the override of the second paragraph first, then the
        # isolate the whole text leaves open
        (f"{RLI}a{PS}{RLO}b", PDF + PDI),
        (f"{RLO}a\nb", PDF),  # a newline: what is open past it is the override, read as one
        (f"a{PS}b", ""),
        (f"{RLO}a{PDF}{PS}{LRE}b{PDF}", ""),
    ],
)
def test_a_paragraph_separator_is_read_both_ways(text: str, added: str) -> None:
    """Rule X8: a paragraph separator ends every run where it is drawn as one; in HTML's text a
    newline is drawn as a space. The closers serve both readings."""
    assert bidi_closed(text) == text + added
