"""The import graph of aaclip/ and study/ (module-level imports only, read from the source) has no cycle.

A cycle forces imports into function bodies to work at all, and makes the import order of a package matter.
Imports under `if TYPE_CHECKING:` never run and are left out.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("aaclip", "study")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def runtime_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level statements that run on import: `if TYPE_CHECKING:` blocks are skipped, try/if are entered."""
    statements = []
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                statements += runtime_statements(node.body) + runtime_statements(node.orelse)
        elif isinstance(node, ast.Try):
            statements += runtime_statements(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                statements += runtime_statements(handler.body)
        else:
            statements.append(node)
    return statements


def imported(node: ast.stmt, known: dict[str, Path]) -> set[str]:
    """Project modules a statement imports: `from a.b import c` is a.b.c when c is a module, else a.b."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                 for alias in node.names}
    else:
        return set()
    return {name for name in names if name in known}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {target for node in runtime_statements(tree.body) for target in imported(node, known)}
        graph[name].discard(name)
    return graph


def test_the_graph_sees_the_project() -> None:
    graph = import_graph()
    assert "aaclip.data.records" in graph["aaclip.data.loading"]
    assert "aaclip.data.synthetic_render" in graph["aaclip.data.synthetic"]
    assert "aaclip.config" in graph["study.spec"]


def test_import_graph_has_no_cycle() -> None:
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def function_level_imports(path: Path) -> set[str]:
    """Modules imported inside function bodies (the usual workaround for a cycle)."""
    names = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module)
                elif isinstance(node, ast.Import):
                    names |= {alias.name for alias in node.names}
    return names


def test_data_package_imports_at_the_top() -> None:
    """aaclip.data needs no import inside a function, except the documented lazy torch part (AnomalyDataset)."""
    lazy = {name: function_level_imports(path) for name, path in modules().items()
            if name.startswith("aaclip.data") and function_level_imports(path)}
    assert lazy == {"aaclip.data": {"aaclip.data.dataset"}}


def test_reading_a_study_never_imports_ray() -> None:
    """status, export and report (and the CLI that runs them) work from any machine that reaches the tracking
    server: no Ray there, nor its start-up time. Checked in a fresh interpreter, whose sys.modules is honest."""
    readers = ("study.cli", "study.status", "study.export", "study.report", "study.record", "study.server")
    code = f"import sys\nfor name in {readers!r}: __import__(name)\nprint(sorted(name for name in sys.modules " \
           "if name == 'ray' or name.startswith('ray.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_study_imports_at_the_top_but_for_its_documented_lazy_imports() -> None:
    """Each lazy import in study/ keeps something slow out of a process that does not need it (a comment says
    which): the CLI's commands, torch outside the trial process and an export without --register, pyplot after the Agg backend is chosen."""
    lazy = {name: function_level_imports(path) for name, path in modules().items()
            if name.startswith("study") and function_level_imports(path)}
    assert lazy == {
        "study.cli": {"study.server", "study.tracking", "study.spec", "study.launch", "study.status",
                      "study.export", "study.report", "aaclip.preflight"},
        "study.devices": {"torch"}, "study.report": {"optuna.visualization"},
        "study.export": {"aaclip.checkpoint", "aaclip.mlflow_model"},
        "study.trainable": {"aaclip.threads", "aaclip.train"},
    }


def test_aaclip_imports_at_the_top_but_for_its_documented_lazy_imports() -> None:
    """Each lazy import in aaclip/ keeps something slow out of a process that does not need it (a comment says
    which): the CLI's commands (a fast --help and fast refusals), matplotlib where a gallery is drawn, and the
    dataset's torch part (aaclip.data, checked above)."""
    lazy = {name: function_level_imports(path) for name, path in modules().items()
            if name.startswith("aaclip") and name != "aaclip.data" and function_level_imports(path)}
    assert lazy == {
        "aaclip.cli": {"aaclip", "aaclip.architecture", "aaclip.checkpoint", "aaclip.config", "aaclip.data.synthetic",
                       "aaclip.factory", "aaclip.preflight", "aaclip.profile", "aaclip.session", "aaclip.threads",
                       "aaclip.tracking_run", "aaclip.train"},
        "aaclip.evaluate": {"matplotlib", "matplotlib.pyplot"},
    }
