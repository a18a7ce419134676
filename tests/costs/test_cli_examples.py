"""The examples that `aiserver-costs --help` and `aiserver-db --help` print run as written (in a
directory holding the `calls.jsonl` that one of them reads, with an example's `NAME=value`
prefix left to this test's environment), each with exit status 0, against a database seeded
with the bundled snapshot and an upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from aiserver.core_db.cli import _parser as db_parser
from aiserver.costs.cli import _parser as costs_parser
from aiserver.costs.refresh import snapshot_bytes

from ..support.upstream import Upstream


def examples(epilog: str | None, program: str) -> list[list[str]]:
    """The commands of an epilog's `examples:` lines (comments and NAME=value prefixes off)."""
    found = []
    for line in (epilog or "").splitlines():
        if not line.startswith("  "):  # the examples are indented; prose is not
            continue
        words = shlex.split(line.split("#", 1)[0])
        while words and "=" in words[0]:
            words = words[1:]
        if words[:1] == [program]:
            found.append(words[1:])
    return found


def test_the_commands_print_examples() -> None:
    assert len(examples(costs_parser().epilog, "aiserver-costs")) >= 4
    assert len(examples(db_parser().epilog, "aiserver-db")) >= 2


async def run(module: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize(
    ("module", "program", "parser"),
    [("aiserver.costs.cli", "aiserver-costs", costs_parser),
     ("aiserver.core_db.cli", "aiserver-db", db_parser)],
)  # fmt: skip
async def test_each_example_runs_as_written(
    module: str,
    program: str,
    parser: object,
    seeded_subprocess_env: dict[str, str],
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    upstream.serve(snapshot_bytes())
    env = dict(seeded_subprocess_env, MODEL_COST_SOURCE_URL=upstream.url)
    call = {"model": "gpt-4o", "usage": {"input_tokens": 1000, "output_tokens": 500}}
    (tmp_path / "calls.jsonl").write_text(json.dumps(call) + "\n")
    ran = []
    for args in examples(parser().epilog, program):  # type: ignore[operator]
        status, out = await run(module, args, env, tmp_path)
        assert status == 0, f"{program} {shlex.join(args)}: exit {status}\n{out}"
        ran.append(args)
    assert ran
    assert os.listdir(tmp_path) == ["calls.jsonl"]  # none wrote a file
