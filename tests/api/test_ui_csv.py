"""The dashboard's CSV download opens safely in a spreadsheet: a value that a spreadsheet would
run as a formula (a tag value is whatever an ingest key sent) is written as text."""

from __future__ import annotations

import csv
import io

from aiserver.api.ui.present import to_csv


def test_a_cell_that_would_start_a_formula_is_written_as_text_and_numbers_are_kept() -> None:
    header = ["from", "tag:team", "cost"]
    rows = [
        ["2026-12-01T00:00:00Z", '=HYPERLINK("http://evil.example","x")', "0.0075"],
        ["2026-12-01T00:00:00Z", "+cmd|' /C calc'!A0", "0"],
        ["2026-12-01T00:00:00Z", "-2+3", "12.5"],
        ["2026-12-01T00:00:00Z", "@SUM(A1:A2)", "1"],
        ["2026-12-01T00:00:00Z", "\tsearch", "1"],
        ["2026-12-01T00:00:00Z", "search=ads", "1"],
    ]
    read = list(csv.reader(io.StringIO(to_csv(header, rows))))
    assert read[0] == header
    assert [row[1] for row in read[1:]] == [
        '\'=HYPERLINK("http://evil.example","x")',
        "'+cmd|' /C calc'!A0",
        "'-2+3",
        "'@SUM(A1:A2)",
        "'\tsearch",
        "search=ads",  # an = inside a value starts nothing
    ]
    assert [row[0] for row in read[1:]] == ["2026-12-01T00:00:00Z"] * 6
    assert [row[2] for row in read[1:]] == ["0.0075", "0", "12.5", "1", "1", "1"]
