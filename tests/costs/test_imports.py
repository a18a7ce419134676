"""Pricing a call needs no database layer, and a command imports only what it runs."""

from __future__ import annotations

import json
import subprocess
import sys

from aiserver.costs.refresh import seed_from_snapshot

from ..conftest import Settings

HEAVY = {"piccolo", "asyncpg", "black", "rich", "structlog", "httpx"}


def _loaded(code: str) -> set[str]:
    """The top-level packages that `code` leaves imported (it prints them, JSON, last line)."""
    program = (
        code
        + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_the_calculator_imports_no_database_or_orm_module() -> None:
    """`aiserver.costs.calculator` with the catalog and pricing, and the store the catalog
    reads through: none of them imports Piccolo (and black with it), structlog's console
    renderer or asyncpg, which the calculation never runs (type-only imports)."""
    loaded = _loaded(
        "import aiserver.costs.calculator, aiserver.costs.catalog, aiserver.costs.money\n"
        "import aiserver.costs.store.prices, aiserver.costs.store.overrides"
    )
    assert "aiserver" in loaded
    assert not loaded & HEAVY


def test_the_cli_help_imports_nothing_of_the_database_layer() -> None:
    """`aiserver-costs --help` (and a command's --help) loads argparse and the settings alone:
    importing every command's modules would cost ~0.3 s before it printed a line."""
    for args in (["--help"], ["calc", "--help"], ["refresh", "--help"]):
        loaded = _loaded(
            "import contextlib, io\nfrom aiserver.costs.cli import main\n"
            f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main({args!r})"
        )
        assert "argparse" in loaded
        assert not loaded & {"piccolo", "asyncpg", "httpx", "black", "structlog"}, args


async def test_calc_imports_no_orm_http_client_or_log_renderer(
    settings: Settings, subprocess_env: dict[str, str]
) -> None:
    """`aiserver-costs calc` reads the catalog through asyncpg and prices; it imports neither
    Piccolo, nor httpx, nor structlog (`cli._connect` reaches PostgreSQL without
    `aiserver.core_db.database`)."""
    await seed_from_snapshot(settings.core)
    program = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})),"
        " file=sys.stderr))\n"
        "from aiserver.costs.cli import main\n"
        "sys.exit(main(['calc', 'gpt-4o', '--input-tokens', '1000', '--json']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=subprocess_env
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == "0.0025"
    loaded = set(json.loads(out.stderr.splitlines()[-1]))
    assert "asyncpg" in loaded
    assert not loaded & {"piccolo", "httpx", "black", "rich", "structlog"}
