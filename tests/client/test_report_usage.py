"""docs/report-usage.md, run as written: every `sh` and `python` block of the page, in order, in
a shell or a Python process of its own, against a real API process and a project of this test,
with only the address and the key file replaced. Each of the four paths (HTTP, the client,
OpenTelemetry, LiteLLM) must record its calls, and the page's last command must show them all
in the project's spend, exactly."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Final

import pytest

from .conftest import Ledger, Tenant, api_events

pytestmark = pytest.mark.slow

ROOT: Final = Path(__file__).resolve().parents[2]
PAGE: Final = ROOT / "docs" / "report-usage.md"
_MARK: Final = "\0--environment--\0"


def blocks() -> list[tuple[str, str]]:
    """(language, code) of every sh and python block of the page, in order."""
    return re.findall(r"```(sh|python)\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


async def run(language: str, code: str, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A block's output, and the environment it leaves (a shell's exports carry on)."""
    if language == "sh":
        marker = _MARK.replace("\0", "\\0")  # printf writes the NULs
        program = ["bash", "-euo", "pipefail", "-c", f"{code}\nprintf '{marker}'; env -0"]
    else:
        program = [sys.executable, "-c", code]
    proc = await asyncio.create_subprocess_exec(
        *program, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, f"this block failed:\n{code}\n{err.decode()}"
    if language != "sh":
        return text, env
    text, _, rest = text.partition(_MARK)
    left = dict(item.split("=", 1) for item in rest.split("\0") if "=" in item)
    return text, left


async def test_every_example_of_the_report_usage_page_records_its_calls_once_and_in_spend(
    ledger: Ledger, tenant: Tenant, tmp_path: Path
) -> None:
    key_file = tmp_path / "demo-key"
    key_file.write_text(tenant.key + "\n")
    env = {k: v for k, v in ledger.env.items() if not k.startswith(("AISERVER_", "OTEL_"))}
    outputs = []
    for language, code in blocks():
        code = code.replace("http://127.0.0.1:8000", ledger.api.base_url)
        code = code.replace(".local/demo-key", str(key_file))
        output, env = await run(language, code, env)
        outputs.append(output)
    assert env["AISERVER_API_KEY"] == tenant.key  # the first block set the variables
    _, single, lines, client, _, _otel, _litellm, spend = outputs

    assert json.loads(single)["status"] == "recorded"
    assert json.loads(single)["total"] == "0.0075"  # gpt-4o: 1000 x 2.5e-06 + 500 x 1e-05
    assert [r["status"] for r in json.loads(lines)["results"]] == ["recorded", "recorded"]
    assert client.strip() == "recorded 0.0001475 USD"  # 19 x 2.5e-06 + 10 x 1e-05

    events = await api_events(ledger.api, tenant)
    otel = [e for e in events.values() if e["id"].startswith("otel-")]
    via_litellm = [e for e in events.values() if e["tags"].get("service") == "chat"]
    assert sorted(events) == sorted([
        "req-1001", "req-1002", "req-1003", "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "req-2001", otel[0]["id"], via_litellm[0]["id"],
    ])  # fmt: skip
    assert (otel[0]["model"], otel[0]["tags"]) == ("gpt-4o", {"service": "search-api"})
    assert otel[0]["total"] == "0.0095"  # 3000 x 2.5e-06 + 200 x 1e-05
    assert (via_litellm[0]["model"], via_litellm[0]["tags"]["team"]) == ("gpt-4o", "search")
    assert events["req-2001"]["tags"] == {"team": "ads"}
    assert all(e["pricing_status"] == "priced" for e in events.values())

    answer = json.loads(spend)
    assert answer["total"]["events"] == 7
    assert Decimal(answer["total"]["cost"]) == sum(Decimal(e["total"]) for e in events.values())
    assert {g["key"]["model"] for g in answer["groups"]} == {
        e["matched_model"] or e["model"] for e in events.values()
    }
