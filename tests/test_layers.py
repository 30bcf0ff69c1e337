"""The package's layers: each subpackage imports only from the layers under it, no module
imports itself back through others, and the batch command loads no server code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

PACKAGE = "diarization_audio"
SOURCE = ROOT / PACKAGE
# What each part may import from the package, besides itself and the shared root modules.
ALLOWED: dict[str, set[str]] = {
    "": set(),  # the shared root modules: settings, errors, logs, names, wav, ...
    "store": set(),
    "labels": {"store"},
    "dataset": {"store", "labels"},
    "ingest": {"store", "labels"},
    "service": {"store", "labels", "dataset", "ingest"},
    "cli": {"store", "labels", "dataset", "ingest", "service"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package's modules `path` imports, at any depth of its code (lazy imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = {_module_name(p) for p in SOURCE.rglob("*.py")}
    return {name for name in found if name in modules and name != _module_name(path)}


def _part(module: str) -> str:
    """The subpackage a module belongs to ("" for the package's own root modules; its
    `python -m` entry point counts as a command)."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "cli"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else ""


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(SOURCE.rglob("*.py"))}


def test_every_module_belongs_to_a_known_part() -> None:
    """A new subpackage needs its place in the layers before it can be used."""
    assert {_part(module) for module in _graph()} <= set(ALLOWED)


def test_imports_point_down_the_layers() -> None:
    """Nothing imports from a layer above it: the stages never reach the service or the
    commands, the store never reaches the labels, the shared modules reach no stage."""
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _part(target) not in {_part(module), "", *ALLOWED[_part(module)]}
        or (_part(module) == "" and _part(target) != "")
    ]
    assert wrong == []


def test_the_rule_is_checked_on_the_real_graph() -> None:
    """The graph is read: the service's app imports the routes and the downloader."""
    graph = _graph()
    assert f"{PACKAGE}.service.routes" in graph[f"{PACKAGE}.service.app"]
    assert f"{PACKAGE}.ingest.downloader" in graph[f"{PACKAGE}.service.app"]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    """No module imports itself back through others (package __init__ files aside, which
    import nothing)."""
    graph = _graph()
    assert _cycle(graph) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize(
    "command",
    [f"{PACKAGE}.cli.batch", f"{PACKAGE}.cli.check", "batch_download_from_csv"],
)
def test_the_http_only_commands_load_no_store_numpy_or_ffmpeg_code(command: str) -> None:
    """The batch and check commands talk to the service over HTTP: importing them loads no
    store, numpy, SQLAlchemy or ffmpeg code (a fresh interpreter, its modules listed)."""
    code = f"import json, sys, {command}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    loaded = json.loads(out.stdout)
    heavy = [
        name
        for name in loaded
        if name.split(".")[0] in {"numpy", "sqlalchemy", "imageio_ffmpeg", "prometheus_client"}
        or name.startswith(
            (f"{PACKAGE}.store", f"{PACKAGE}.ingest", f"{PACKAGE}.labels", f"{PACKAGE}.service")
        )
    ]
    assert heavy == []
    assert f"{PACKAGE}.cli.client" in loaded  # what it does load: the HTTP client
