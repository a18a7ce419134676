"""The arrows between the packages, read from the source with `ast`, and two things that no
package source may do. Each rule is checked on the real tree and shown to fail on a small
module written here, so that none of them passes because it cannot fail.

The arrows (a package may import only the packages to its left, and itself):

    core_db <- costs <- ledger <- api, taskrunner
    core_db <- documents     <- api, taskrunner

api and taskrunner never import each other; the client imports no server package at all. A
package named here that does not exist yet (client) is simply not found.

SQL lives only where its tables are owned: a domain's store module(s) (`store.py`, `store/`) and
migrations, and the foundation (core_db's migration runner, locks and readiness checks).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
PACKAGES: Final = ROOT / "packages"

#: The aiserver packages each package may import, besides itself.
MAY_IMPORT: Final[dict[str, frozenset[str]]] = {
    "core_db": frozenset(),
    "costs": frozenset({"core_db"}),
    "documents": frozenset({"core_db"}),
    "ledger": frozenset({"core_db", "costs"}),
    "api": frozenset({"core_db", "costs", "documents", "ledger"}),
    "taskrunner": frozenset({"core_db", "costs", "documents", "ledger"}),
    "client": frozenset(),
}

#: What to do instead, per importing package.
ADVICE: Final[dict[str, str]] = {
    "core_db": "core_db is the bottom: it learns of the other packages through entry points "
    "(aiserver.piccolo_apps, aiserver.initializers), never by importing them",
    "costs": "move what costs needs down into core_db, or invert the call (core_db offers an "
    "entry point or a parameter, costs plugs into it)",
    "documents": "move what documents needs down into core_db; documents and costs do not "
    "know each other",
    "ledger": "move what ledger needs down into costs or core_db",
    "api": "api and taskrunner never import each other (nor the client): put what both "
    "need into costs, documents or ledger and import it from there",
    "taskrunner": "api and taskrunner never import each other (nor the client): put what both "
    "need into costs, documents or ledger and import it from there",
    "client": "the client talks to the server over HTTP only: copy the wire types it needs "
    "into the client package, never import a server package",
}

#: Where SQL may be written: a domain's store and migrations, and the foundation's own modules.
SQL_ALLOWED: Final = re.compile(r"^packages/core-db/|/store\.py$|/store/|/piccolo_migrations/")

#: SQL as our code writes it: keywords in capitals (so "Select a model" is prose, not SQL).
SQL: Final = re.compile(
    r"\bSELECT\s+\S|\bINSERT\s+INTO\b|\bUPDATE\s+[\w.\"]+\s+SET\b|\bDELETE\s+FROM\b"
)

#: Litestar's private attributes that have been reached for (`request._body` to re-read a
#: body, `_connection_state` for per-connection state).
LITESTAR_PRIVATE_ATTRIBUTES: Final = frozenset({"_body", "_connection_state"})


@dataclass(frozen=True)
class Module:
    """One module's source, its dotted name and where it is (relative to the repository)."""

    path: str
    name: str
    source: str

    @property
    def package(self) -> str:
        """The aiserver package the module belongs to ('core_db' for aiserver.core_db.x)."""
        return self.name.split(".")[1]

    def tree(self) -> ast.Module:
        return ast.parse(self.source, filename=self.path)

    def where(self, node: ast.expr | ast.stmt) -> str:
        return f"{self.path}:{node.lineno}"

    def text(self, node: ast.expr | ast.stmt) -> str:
        return " ".join((ast.get_source_segment(self.source, node) or ast.unparse(node)).split())


def source_modules() -> list[Module]:
    """Every module under packages/*/src, named as Python imports it."""
    found = []
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        src = next(p for p in path.parents if p.name == "src")
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append(Module(str(path.relative_to(ROOT)), ".".join(parts), path.read_text("utf-8")))
    return found


def aiserver_package(dotted: str) -> str | None:
    """'costs' for 'aiserver.costs' or 'aiserver.costs.store'; None outside aiserver."""
    parts = dotted.split(".")
    return parts[1] if parts[0] == "aiserver" and len(parts) > 1 else None


# -- the arrows ---------------------------------------------------------------------------------


def imported_modules(module: Module) -> Iterator[tuple[ast.stmt | ast.expr, str]]:
    """Each import statement (and `importlib.import_module("...")` call) with every dotted
    module name it imports; relative imports are resolved against the module's own name."""
    is_package = module.path.endswith("__init__.py")
    for node in ast.walk(module.tree()):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            if origin == "aiserver":  # from aiserver import costs
                for alias in node.names:
                    yield node, f"aiserver.{alias.name}"
            else:
                yield node, origin
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node, node.args[0].value


def arrow_violations(module: Module) -> list[str]:
    own = module.package
    if own not in MAY_IMPORT:
        return [
            f"{module.path}: the package aiserver.{own} has no rule: add it to MAY_IMPORT in "
            "tests/test_architecture.py with the packages it may import"
        ]
    found = []
    for node, target in imported_modules(module):
        other = aiserver_package(target)
        if other is None or other == own or other in MAY_IMPORT[own]:
            continue
        if other not in MAY_IMPORT:
            why = f"aiserver.{other} is no package the rules know (MAY_IMPORT)"
        else:
            allowed = ", ".join(sorted(MAY_IMPORT[own])) or "no other aiserver package"
            why = f"{own} may import only {allowed}; {ADVICE[own]}"
        found.append(f"{module.where(node)}: `{module.text(node)}`: {own} imports {other}: {why}")
    return found


# -- no SQL in the controllers and the task runner ----------------------------------------------


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ) and ast.get_docstring(node, clean=False):
            ids.add(id(node.body[0].value))  # type: ignore[attr-defined]
    return ids


def string_literals(tree: ast.Module) -> Iterator[tuple[ast.expr, str]]:
    """Every string literal that is not a docstring; an f-string as one text with `_` where its
    values go (so f"UPDATE {table} SET" reads "UPDATE _ SET")."""
    skip = _docstrings(tree)
    inside_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = ""
            for part in node.values:
                inside_fstrings.add(id(part))
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    text += part.value
                else:
                    text += "_"
            yield node, text
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and id(node) not in inside_fstrings
        ):
            yield node, node.value


def sql_violations(module: Module) -> list[str]:
    found = []
    for node, text in string_literals(module.tree()):
        match = SQL.search(text)
        if match:
            snippet = " ".join(text[match.start() :].split())[:60]
            found.append(
                f"{module.where(node)}: SQL in a string ({snippet!r}): only a domain's store "
                "modules hold SQL. Move the query into the package that owns the table "
                "(costs, documents or ledger, into its store) as a function, and call that."
            )
    return found


def no_sql_modules(modules: list[Module]) -> list[Module]:
    return [m for m in modules if not SQL_ALLOWED.search(m.path)]


# -- no private names of Litestar ---------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _dotted(node: ast.expr) -> list[str] | None:
    """['litestar', '_signature', 'x'] for the expression litestar._signature.x."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else [*base, node.attr]
    return None


def litestar_private_violations(module: Module) -> list[str]:
    advice = (
        "Litestar's private names change without notice between releases: use its public API "
        "(`await request.body()`, `request.state`, the DTO's public methods), or ask for one."
    )
    found = []
    for node in ast.walk(module.tree()):
        used: str | None = None
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "litestar"]
            used = next((n for n in names if any(map(_private, n.split(".")))), None)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            parts = node.module.split(".")
            if parts[0] == "litestar" and (
                any(map(_private, parts)) or any(_private(a.name) for a in node.names)
            ):
                used = node.module
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if node.attr in LITESTAR_PRIVATE_ATTRIBUTES:
                used = f".{node.attr}"
            elif dotted and dotted[0] == "litestar" and _private(node.attr):
                used = ".".join(dotted)  # litestar._a.b: only at `._a`, so named once
        elif isinstance(node, ast.Constant) and node.value in LITESTAR_PRIVATE_ATTRIBUTES:
            used = repr(node.value)  # getattr(request, "_body"), scope["_connection_state"]
        if used is not None:
            assert isinstance(node, ast.expr | ast.stmt)
            found.append(f"{module.where(node)}: `{module.text(node)}` uses {used}: {advice}")
    return found


# -- the rules on the real tree -----------------------------------------------------------------


@pytest.fixture(scope="module")
def modules() -> list[Module]:
    return source_modules()


def test_every_package_is_found_and_has_a_rule(modules: list[Module]) -> None:
    found = {m.package for m in modules}
    assert {"core_db", "costs", "documents", "api", "taskrunner"} <= found, (
        f"packages/*/src holds {sorted(found)}: the checks below would read nothing"
    )
    assert ADVICE.keys() == MAY_IMPORT.keys(), "each package with a rule says what to do instead"
    unknown = found - MAY_IMPORT.keys()
    assert not unknown, (
        f"aiserver packages without an arrow rule: {sorted(unknown)}; add each to MAY_IMPORT "
        "in tests/test_architecture.py with the packages it may import"
    )
    assert len(no_sql_modules(modules)) > len(modules) / 2, "the SQL rule reads too few modules"


def test_each_package_imports_only_the_packages_below_it(modules: list[Module]) -> None:
    found = [v for m in modules for v in arrow_violations(m)]
    assert not found, "imports against the arrows:\n" + "\n".join(found)


def test_sql_lives_only_in_the_store_modules(modules: list[Module]) -> None:
    found = [v for m in no_sql_modules(modules) for v in sql_violations(m)]
    assert not found, "SQL outside the packages that own the tables:\n" + "\n".join(found)


def test_no_package_uses_a_private_name_of_litestar(modules: list[Module]) -> None:
    found = [v for m in modules for v in litestar_private_violations(m)]
    assert not found, "private Litestar names:\n" + "\n".join(found)


# -- each rule fails where it should ------------------------------------------------------------


def synthetic(package: str, source: str, *, module: str = "x", init: bool = False) -> Module:
    name = f"aiserver.{package}" + ("" if init else f".{module}")
    tail = "__init__" if init else module
    path = f"packages/{package}/src/aiserver/{package}/{tail}.py"
    return Module(path, name, source)


@pytest.mark.parametrize(
    ("package", "source", "line", "imported"),
    [
        ("core_db", "import os\nfrom aiserver.costs import store\n", 2, "costs"),
        ("costs", "from aiserver.documents.kinds import Kind\n", 1, "documents"),
        ("documents", "import aiserver.costs.store\n", 1, "costs"),
        ("costs", "from aiserver import ledger\n", 1, "ledger"),
        ("ledger", "from aiserver.api.app import create_app\n", 1, "api"),
        ("api", "\n\nfrom aiserver.taskrunner.worker import make_worker\n", 3, "taskrunner"),
        ("taskrunner", "from aiserver.api import schemas\n", 1, "api"),
        ("client", "from aiserver.costs.pricing import Prices\n", 1, "costs"),
        ("client", "from aiserver.core_db.settings import Section\n", 1, "core_db"),
        ("costs", "def f():\n    from ..api import app\n", 2, "api"),
        ("costs", "import importlib\nimportlib.import_module('aiserver.api.app')\n", 2, "api"),
        ("costs", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import aiserver.api\n",
         3, "api"),
        ("api", "from aiserver.billing import x\n", 1, "billing"),
    ],
)  # fmt: skip
def test_an_import_against_the_arrows_is_named_with_its_line(
    package: str, source: str, line: int, imported: str
) -> None:
    module = synthetic(package, source)
    (found,) = arrow_violations(module)
    assert found.startswith(f"{module.path}:{line}: `")
    assert f"{package} imports {imported}" in found
    assert imported in found.split("`")[1]  # the import statement itself is quoted


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("core_db", "import asyncpg\nfrom aiserver.core_db.settings import Section\n"),
        ("costs", "from aiserver.core_db.database import database\nfrom . import store\n"),
        ("costs", "from .store import read\nfrom ..costs import pricing\n"),
        ("documents", "from aiserver.core_db import errors\n"),
        ("ledger", "from aiserver.costs import pricing\nfrom aiserver.core_db import locks\n"),
        ("api", "from aiserver.costs import store\nfrom aiserver.documents import jobs\n"
                "from aiserver.ledger import entries\nfrom aiserver.core_db import database\n"),
        ("taskrunner", "from aiserver.costs import refresh\nfrom aiserver import documents\n"),
        ("client", "import httpx\nfrom aiserver.client import models\n"),
        ("api", "log = get_logger('aiserver.taskrunner')  # a string is no import\n"),
    ],
)  # fmt: skip
def test_imports_along_the_arrows_pass(package: str, source: str) -> None:
    assert arrow_violations(synthetic(package, source)) == []


def test_a_relative_import_resolves_from_a_package_init() -> None:
    module = synthetic("costs", "from .. import api\nfrom . import store\n", init=True)
    (found,) = arrow_violations(module)
    assert found.startswith(f"{module.path}:1: `from .. import api`")


def test_a_package_without_a_rule_is_named() -> None:
    (found,) = arrow_violations(synthetic("billing", "import os\n"))
    assert "add it to MAY_IMPORT" in found


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ('async def f(conn):\n    await conn.fetch("SELECT id FROM ai_model_costs")\n', 2),
        ('Q = """\n    INSERT INTO ai_cost_overrides (model)\n    VALUES ($1)\n"""\n', 1),
        ('Q = "UPDATE ai_cost_metadata SET catalog_version = 2"\n', 1),
        ('Q = "DELETE FROM ai_cost_overrides WHERE id = $1"\n', 1),
        ('Q = f"UPDATE {table} SET x = 1"\n', 1),
        ('Q = ("SELECT count(*) "\n     "FROM documents")\n', 1),
        ('Q = "select 1; " + "SELECT pg_notify($1, $2)"\n', 1),
    ],
)
def test_sql_in_a_string_is_named_with_its_line(source: str, line: int) -> None:
    module = synthetic("api", source, module="controllers/things")
    (found,) = sql_violations(module)
    assert found.startswith(f"{module.path}:{line}: SQL in a string")
    assert "Move the query into the package that owns the table" in found


@pytest.mark.parametrize(
    "source",
    [
        '"""SELECT the models: this docstring says how, it runs nothing."""\n',
        'def f():\n    """INSERT INTO nothing: a docstring."""\n',
        "# SELECT id FROM t: a comment\n",
        'MESSAGE = "select a model, then update the settings"\n',
        'TITLE = "Delete from the catalog"\n',
        'ROUTE = "/models/{model}"\n',
    ],
)
def test_prose_docstrings_and_comments_are_not_sql(source: str) -> None:
    assert sql_violations(synthetic("api", source, module="controllers/things")) == []


def test_the_sql_rule_spares_only_stores_migrations_and_the_foundation() -> None:
    sql = 'Q = "SELECT 1"\n'
    paths = {
        "packages/api/src/aiserver/api/controllers/costs.py": True,
        "packages/api/src/aiserver/api/auth.py": True,
        "packages/taskrunner/src/aiserver/taskrunner/jobs.py": True,
        "packages/ledger/src/aiserver/ledger/projects.py": True,
        "packages/costs/src/aiserver/costs/refresh.py": True,
        "packages/costs/src/aiserver/costs/store/prices.py": False,
        "packages/ledger/src/aiserver/ledger/store.py": False,
        "packages/documents/src/aiserver/documents/piccolo_migrations/documents_1.py": False,
        "packages/core-db/src/aiserver/core_db/locks.py": False,
    }
    modules = [Module(path, "aiserver.x.y", sql) for path in paths]
    assert {m.path for m in no_sql_modules(modules)} == {p for p, inside in paths.items() if inside}


@pytest.mark.parametrize(
    ("source", "line", "used"),
    [
        ("from litestar._signature import SignatureModel\n", 1, "litestar._signature"),
        ("import litestar._openapi.plugin\n", 1, "litestar._openapi.plugin"),
        ("from litestar.dto._backend import DTOBackend\n", 1, "litestar.dto._backend"),
        ("from litestar.connection import _private_helper\n", 1, "litestar.connection"),
        ("import litestar\n\nx = litestar._kwargs\n", 3, "litestar._kwargs"),
        ("import litestar\n\nx = litestar._kwargs.cleanup.x\n", 3, "litestar._kwargs"),
        ("async def f(request):\n    return request._body\n", 2, "._body"),
        ("def f(connection):\n    return connection._connection_state\n", 2,
         "._connection_state"),
        ("def f(request):\n    return getattr(request, '_body', None)\n", 2, "'_body'"),
        ("def f(scope):\n    return scope['_connection_state']\n", 2, "'_connection_state'"),
    ],
)  # fmt: skip
def test_a_private_litestar_name_is_named_with_its_line(source: str, line: int, used: str) -> None:
    module = synthetic("api", source)
    (found,) = litestar_private_violations(module)
    assert found.startswith(f"{module.path}:{line}: `")
    assert f"uses {used}:" in found
    assert "use its public API" in found


@pytest.mark.parametrize(
    "source",
    [
        "from litestar import Litestar, Request\nfrom litestar.dto import DTOConfig\n",
        "import litestar\nprint(litestar.__version__)\n",
        "def _sent_no_body(request):\n    return request.body()\n",
        "class Mine:\n    _cache = None\n\nMine()._cache\n",
    ],
)
def test_public_litestar_names_pass(source: str) -> None:
    assert litestar_private_violations(synthetic("api", source)) == []
