"""Pricing a call needs no database layer: importing the calculator stays light."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_calculator_imports_no_database_or_orm_module() -> None:
    """`aiserver.costs.calculator` (with the catalog and pricing) used to pull in Piccolo (and
    black with it), structlog's console renderer and asyncpg through type-only imports: about
    400 ms of import for nothing the calculation runs."""
    code = (
        "import json, sys; import aiserver.costs.calculator, aiserver.costs.catalog;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "aiserver" in loaded
    assert not loaded & {"piccolo", "asyncpg", "black", "rich", "structlog", "httpx"}
