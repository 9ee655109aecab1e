"""Money code never uses binary floats: no float annotation, literal or float() call."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Directories (every .py below them) and single files (or globs) that handle money.
CHECKED_PATHS: tuple[str, ...] = (
    "src/exchange/domain",
    "src/exchange/engine",
    "src/exchange/api/params.py",
    "src/exchange/api/context.py",
    "src/exchange/api/views.py",
    "src/exchange/api/*_methods.py",
    "src/exchange/api/ws.py",
    "src/exchange/api/fanout.py",
    "src/exchange/api/subscribers.py",
    "src/exchange/api/binance",
    "src/exchange/services/wallet.py",
    "src/exchange/admin.py",
    "src/exchange/services/history.py",
    "src/exchange/services/marketdata.py",
    "src/exchange/adapters/db/candle_store.py",
    "src/exchange/demo/bots.py",
    "src/exchange/adapters/db/tables.py",
)

#: A line that is not about money (a timeout in seconds, say) may opt out with
#: this comment, giving its reason: ``delay = 0.2  # float-ok: seconds``.
EXEMPT_MARK = "# float-ok"


def float_uses(source: str, filename: str = "<snippet>") -> list[str]:
    """Every float annotation, float literal and float() call, as 'file:line: what'."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float | complex):
            found.append(f"{filename}:{node.lineno}: float literal {node.value!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "float":
                found.append(f"{filename}:{node.lineno}: float() call")
        elif isinstance(node, ast.Name) and node.id == "float":
            found.append(f"{filename}:{node.lineno}: the name float (annotation or use)")
        elif isinstance(node, ast.Attribute) and node.attr == "float":
            found.append(f"{filename}:{node.lineno}: .float attribute")
    for node in ast.walk(tree):
        annotations: list[ast.expr | None] = []
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
            arguments = node.args
            for arg in [
                *arguments.posonlyargs,
                *arguments.args,
                *arguments.kwonlyargs,
                arguments.vararg,
                arguments.kwarg,
            ]:
                if arg is not None:
                    annotations.append(arg.annotation)
        for annotation in annotations:
            if (
                isinstance(annotation, ast.Constant)
                and isinstance(annotation.value, str)
                and "float" in annotation.value
            ):
                found.append(f"{filename}:{annotation.lineno}: float in string annotation")
    lines = source.splitlines()
    return [item for item in found if EXEMPT_MARK not in lines[_line_of(item) - 1]]


def _line_of(item: str) -> int:
    return int(item.split(":")[-2])


def _files_of(entry: str) -> list[Path]:
    if any(char in entry for char in "*?["):
        return sorted(ROOT.glob(entry))
    path = ROOT / entry
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path] if path.is_file() else []


def checked_files() -> list[Path]:
    return [path for entry in CHECKED_PATHS for path in _files_of(entry)]


def test_every_listed_path_matches_a_file() -> None:
    """A moved or renamed module must not silently drop out of the check."""
    assert [entry for entry in CHECKED_PATHS if not _files_of(entry)] == []


def test_the_checker_detects_floats() -> None:
    sample = (
        "from typing import Optional\n"
        "def price(x: float) -> int:\n"
        "    return 1\n"
        "rate = 0.002\n"
        "value = float('1.5')\n"
        "def ratio() -> 'Optional[float]':\n"
        "    return None\n"
        "share: dict[str, float] = {}\n"
    )
    found = float_uses(sample)
    assert any("float literal 0.002" in item for item in found)
    assert any("float() call" in item for item in found)
    assert any(":2: the name float" in item for item in found)
    assert any(":8: the name float" in item for item in found)
    assert any("string annotation" in item for item in found)
    assert float_uses("from decimal import Decimal\nx: int = 1\ny = Decimal('0.1')\n") == []
    assert float_uses("poll = 0.25  # float-ok: seconds, not money\n") == []


def test_domain_is_checked() -> None:
    names = {path.name for path in checked_files()}
    assert {"money.py", "matching.py", "ledger.py", "wallet.py", "wallet_methods.py"} <= names


def test_no_float_in_money_code() -> None:
    found: list[str] = []
    for path in checked_files():
        found.extend(float_uses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))))
    assert found == [], "binary floats in money code:\n" + "\n".join(found)
