"""What every `aiserver-*` command does with a failure: print its problem, exit 1.

A failure is an RFC 9457 problem with the API's types (`AiserverError.problem()`): with `--json`
it is printed as `{"error": {...}}` on stdout, else its detail on stderr. A failure that is not
an error of aiserver's is raised as it is (a bug shows its traceback).

Light on purpose: a command imports this before it knows what it will run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from aiserver.core_db.errors import AiserverError, problem

Problem = dict[str, Any]


def command_problem(exc: Exception) -> Problem | None:
    """The problem of a domain error, or of tables that are missing (migrations not applied);
    None for anything else."""
    if isinstance(exc, AiserverError):
        return exc.problem()
    asyncpg = sys.modules.get("asyncpg")  # loaded by whatever met the database
    if asyncpg and isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        detail = (
            f"the tables are missing or behind ({exc}); "
            "apply the migrations first: aiserver-db migrate"
        )
        return problem(503, detail, slug="schema-not-migrated")
    return None


def run_command(
    prog: str,
    command: Coroutine[Any, Any, int],
    *,
    as_json: bool,
    problem_of: Callable[[Exception], Problem | None] = command_problem,
) -> int:
    """Run a command's coroutine; its exit status, or 1 after printing its failure's problem."""
    import asyncio

    try:
        return asyncio.run(command)
    except Exception as exc:
        failure = problem_of(exc)
        if failure is None:
            raise
    if as_json:
        print(json.dumps({"error": failure}, ensure_ascii=False))
    else:
        print(f"{prog}: {failure['detail']}", file=sys.stderr)
    return 1


def timestamp(text: str) -> datetime:
    """An argparse type: an RFC 3339 time; one without an offset is read as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
