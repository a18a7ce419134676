"""docs/budgets.md, "Try it", run as a newcomer runs it: `hatch run dev`, the local alert receiver,
then the shell commands of the third terminal as written, with only the addresses replaced (dev
on a free port, the receiver on another, the demo key in this test's data folder), after the
README's example call was recorded in the demo project. A hard daily
budget refuses the reservation that would pass its limit, settles the first at its real cost,
and the alert it raises arrives at the receiver signed with the budget's secret."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path
from typing import Final

import httpx
import pytest
from redis.asyncio import Redis

from ..conftest import TEST_REDIS_URL
from .test_dev import ROOT, dev_env, free_port, running_dev

pytestmark = pytest.mark.slow

DOC: Final = ROOT / "docs" / "budgets.md"
#: The task runner looks for due alerts every 10 s; a busy 2-core machine may take a while.
ALERT_TIMEOUT_S: Final = 90.0


def try_it_blocks() -> list[str]:
    """The `sh` blocks of the section "Try it", in order."""
    text = DOC.read_text()
    section = text[text.index("## Try it") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


async def test_a_newcomer_sets_a_hard_daily_budget_sees_a_refusal_and_receives_a_signed_alert(
    dev_database_url: str, redis: Redis, tmp_path: Path
) -> None:
    dev_block, receiver_block, commands = try_it_blocks()
    assert dev_block.startswith("hatch run dev")
    (receiver_line,) = [line for line in receiver_block.splitlines() if line.startswith("hatch")]
    receiver_args = shlex.split(receiver_line)
    assert receiver_args[:3] == ["hatch", "run", "aiserver-ledger"]

    port = free_port()
    data = tmp_path / "local"
    # dev lets its services reach the walkthrough's receiver on port 8900 only: this one's port
    env = dev_env(DATABASE_URL=dev_database_url, REDIS_URL=TEST_REDIS_URL,
                  WEBHOOK_ALLOWED_HOSTS=f"127.0.0.1:{port}")  # fmt: skip
    receiver_out = tmp_path / "receiver.out"
    async with running_dev("--data-dir", str(data), env=env, log=tmp_path / "dev.log") as dev:
        await dev.until_ready()
        # terminal 2: the receiver as the doc starts it (the console script hatch runs), on a
        # free port, stopping after the first verified alert
        program = str(Path(sys.executable).with_name("aiserver-ledger"))
        args = [a if a != "8900" else str(port) for a in receiver_args[3:]]
        with receiver_out.open("wb") as out:
            receiver = await asyncio.create_subprocess_exec(
                program, *args, "--count", "1", env=env, stdout=out,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        try:
            assert receiver.stderr is not None
            started = await asyncio.wait_for(receiver.stderr.readline(), 30)
            assert b"receiving budget alerts at" in started, started

            # what the README had the newcomer record in the demo project earlier today: the
            # budget of the walkthrough counts only its own tag, so this takes none of its room
            # (before, the first reservation was refused)
            key = (data / "demo-key").read_text().strip()
            async with httpx.AsyncClient(timeout=30) as http:
                earlier = await http.post(
                    f"{dev.api}/v1/usage", headers={"Authorization": f"Bearer {key}"},
                    json={"id": "req-1", "model": "gpt-4o", "tags": {"user": "u-42"},
                          "usage": {"input_tokens": 1000, "output_tokens": 500}},
                )  # fmt: skip
            assert earlier.status_code == 201, earlier.text

            # terminal 3: the commands as written
            script = (
                commands.replace("http://127.0.0.1:8000", dev.api)
                .replace(".local/demo-key", str(data / "demo-key"))
                .replace("8900", str(port))
            )
            shell = await asyncio.create_subprocess_exec(
                "bash", "-euo", "pipefail", "-c", script, cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(shell.communicate(), 60)
            said = out.decode()
            assert shell.returncode == 0, dev.explain(f"the commands failed: {err.decode()}")

            # the budget made, the second reservation refused, both calls recorded
            assert '"name":"demo daily"' in said, said
            refusal = re.search(r'\{"type":"[^"]*budget-exceeded".*?\}', said)
            assert refusal, said
            assert '"status":402' in refusal.group(0)
            assert (
                "budget 1 ('demo daily') cannot hold 0.015 USD more: its limit is 0.02 and 0.005 "
                "remains in this window; nothing was reserved"
            ) in refusal.group(0)
            assert said.count('"status":"recorded"') == 2, said
            # the listing at the end: the reservation settled at the real cost, nothing held
            listing = said[said.rindex('{"budgets":') :]
            assert '"committed":"0.015"' in listing, listing
            assert '"reserved":"0"' in listing, listing
            assert '"remaining":"0.005"' in listing, listing

            # the alert arrives, signed with the budget's secret, once the task runner sends it
            status = await asyncio.wait_for(receiver.wait(), ALERT_TIMEOUT_S)
        finally:
            if receiver.returncode is None:
                receiver.kill()
                await receiver.wait()
        assert status == 0
        printed = receiver_out.read_text()
        assert "alert 1: budget 'demo daily' of project demo crossed 50% of 0.02 USD " in printed
        assert "(committed 0.015)" in printed
        assert printed.rstrip().endswith("signature verified"), printed
