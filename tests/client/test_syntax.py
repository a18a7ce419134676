"""The client runs on Python 3.9: no newer syntax, and no annotation that 3.9 cannot evaluate
(msgspec reads annotations at run time, where `X | None` fails before 3.10)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLIENT = Path(__file__).parents[2] / "packages" / "client" / "src" / "aiserver" / "client"
MODULES = sorted(CLIENT.rglob("*.py"))


def test_the_client_has_modules() -> None:
    assert {path.name for path in MODULES} >= {"__init__.py", "client.py", "recorder.py"}


def _annotations(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) or (
            isinstance(node, ast.arg) and node.annotation is not None
        ):
            found.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            found.append(node.returns)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_client_module_is_python_3_9(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    unions = [
        f"{path.name}:{a.lineno}: {ast.unparse(a)}"
        for a in _annotations(tree)
        for node in ast.walk(a)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
    ]
    assert unions == [], "X | Y annotations need Python 3.10; write Optional[X] / Union[X, Y]"
    # Strings in annotations are parsed too: a quoted "X | None" fails the same way.
    quoted = [
        f"{path.name}:{a.lineno}: {a.value}"
        for a in _annotations(tree)
        if isinstance(a, ast.Constant) and isinstance(a.value, str) and "|" in a.value
    ]
    assert quoted == []


def test_the_syntax_check_refuses_newer_syntax() -> None:
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))
    tree = ast.parse("def f(a: int | None) -> None: ...\n", feature_version=(3, 9))
    assert any(isinstance(n, ast.BinOp) for a in _annotations(tree) for n in ast.walk(a))
