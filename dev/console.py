"""The combined log: every line of every process, after a prefix that says whose it is.

Prefixes are coloured on a terminal only (and never with `NO_COLOR` set; `FORCE_COLOR` forces
them), so a log piped to a file or a test stays plain text.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Final, TextIO

_RESET: Final = "\033[0m"
_BOLD: Final = "\033[1m"
_COLOURS: Final = {
    "dev": "\033[1;37m",
    "postgres": "\033[34m",
    "redis": "\033[31m",
    "init": "\033[33m",
    "api": "\033[32m",
    "taskrunner": "\033[35m",
}
_OTHER: Final = "\033[36m"
#: Wide enough for the longest name, so that the bars line up.
_WIDTH: Final = max(len(name) for name in _COLOURS)


def wants_colour(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Console:
    """Writes prefixed lines to one stream; `say` is the runner's own voice."""

    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = wants_colour(self.stream) if colour is None else colour

    def line(self, source: str, text: str) -> None:
        prefix = f"{source:>{_WIDTH}} |"
        if self.colour:
            prefix = f"{_COLOURS.get(source, _OTHER)}{prefix}{_RESET}"
        self._write(f"{prefix} {text}\n")

    def say(self, text: str) -> None:
        self.line("dev", text)

    def block(self, lines: list[str], *, title: str) -> None:
        """Lines without a prefix, set apart, so that they are easy to read and to copy."""
        head = f"{_BOLD}{title}{_RESET}" if self.colour else title
        self._write("\n" + "\n".join([head, *lines]) + "\n\n")

    def _write(self, text: str) -> None:
        # A reader gone (`hatch run dev | head`, a closed terminal) must not keep the runner from
        # stopping everything cleanly.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()
