"""The product, the benchmark and the docs' scripts import nothing from tests/ and never edit
sys.path to reach it: what they share with the tests lives in the package or in bench/."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from support import ROOT

TESTS = ROOT / "tests"


def names_in_tests() -> set[str]:
    """Every top-level name that resolves into tests/ when it is on the path (as pytest puts it)."""
    names = {"tests"} | {path.stem for path in TESTS.glob("*.py")}
    return names | {path.parent.name for path in TESTS.glob("*/__init__.py")}


def checked_files() -> list[Path]:
    """The root scripts, the package, the benchmark and the docs' scripts."""
    found = [*ROOT.glob("*.py")]
    for folder in ("diarization_audio", "bench", "docs"):
        found += [p for p in (ROOT / folder).rglob("*.py") if ".work" not in p.parts]
    return sorted(found)


def imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import, including importlib.import_module("...")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and _dotted(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def path_edits(tree: ast.AST) -> Iterator[int]:
    """Lines that change sys.path: a call on it (insert, append ...), an assignment to it or to
    a slice of it, or site.addsitedir."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            on_path = isinstance(func, ast.Attribute) and _dotted(func.value) == "sys.path"
            if on_path or _dotted(func) == "site.addsitedir":
                yield node.lineno
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                base = target.value if isinstance(target, ast.Subscript) else target
                if _dotted(base) == "sys.path":
                    yield node.lineno


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def offences(source: str, name: str, forbidden: set[str]) -> list[str]:
    """What in `source` (the file `name`) reaches a module in `forbidden`, line by line."""
    tree = ast.parse(source, name)
    found = [(line, f"imports {module}") for line, module in imported(tree)
             if module.split(".")[0] in forbidden]  # fmt: skip
    found += [(line, "changes sys.path") for line in path_edits(tree)]
    return [f"{name}:{line}: {what}" for line, what in sorted(found)]


def test_nothing_outside_tests_imports_from_them_or_edits_sys_path() -> None:
    """No root script, package module, benchmark module or docs script imports a module of
    tests/ (conftest, support, a test module) or changes sys.path."""
    forbidden = names_in_tests()
    assert {"conftest", "support", "tests"} <= forbidden
    files = checked_files()
    assert ROOT / "diarization_audio" / "cli" / "demo.py" in files
    assert ROOT / "bench" / "harness.py" in files and ROOT / "docs" / "screenshot.py" in files
    found = [
        offence
        for path in files
        for offence in offences(path.read_text(), str(path.relative_to(ROOT)), forbidden)
    ]
    assert found == []


def test_the_check_sees_each_way_of_reaching_tests() -> None:
    """Each way in, planted in a file, is reported, and the package's own imports are not."""
    source = "\n".join(
        [
            "import sys, importlib, site",
            "from support.stores import make_settings",
            "import conftest",
            "from tests.support import ROOT",
            "importlib.import_module('support.source_server')",
            "sys.path.insert(0, 'tests')",
            "sys.path[:0] = ['tests']",
            "sys.path += ['tests']",
            "site.addsitedir('tests')",
            "from diarization_audio.settings import Settings",
            "from . import sibling",
        ]
    )
    assert offences(source, "planted.py", names_in_tests()) == [
        "planted.py:2: imports support.stores",
        "planted.py:3: imports conftest",
        "planted.py:4: imports tests.support",
        "planted.py:5: imports support.source_server",
        "planted.py:6: changes sys.path",
        "planted.py:7: changes sys.path",
        "planted.py:8: changes sys.path",
        "planted.py:9: changes sys.path",
    ]
