"""The package's layout: no import cycle, no module-level ``__getattr__``, no private name imported
from another module, no module over 500 lines, no machine timings in docstrings (issue #22; they
belong in benchmark tables, ``figures/PROVENANCE.md`` and the README)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "motionqc"


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package modules it imports, at module level or inside functions.

    ``from motionqc.x import y`` counts as importing ``motionqc.x.y`` when that is a module, else
    ``motionqc.x``; imports under ``if TYPE_CHECKING:`` do not count.
    """
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(), filename=str(file))
        skip = _type_checking_lines(tree)
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "motionqc"
    (pkg / "app").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app" / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("def f():\n    from motionqc.app import cli\n")
    (pkg / "app" / "cli.py").write_text("from motionqc import engine\n")
    (pkg / "hints.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from motionqc import engine\n"
    )
    (pkg / "user.py").write_text("from . import hints\n")
    graph = import_graph(pkg)
    assert graph["motionqc.engine"] == {"motionqc.app.cli"}
    assert graph["motionqc.user"] == {"motionqc.hints"}
    assert graph["motionqc.hints"] == set()
    assert cycles(graph) == [["motionqc.app.cli", "motionqc.engine"]]


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_module_level_getattr() -> None:
    offenders = []
    for name, file in _modules().items():
        tree = ast.parse(file.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                offenders.append(name)
    assert offenders == []


def test_no_private_name_imported_from_another_module() -> None:
    offenders = []
    for name, file in _modules().items():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("motionqc"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{name}: {node.module}.{alias.name}")
    assert offenders == []


TIMING = re.compile(
    r"\d(?:[\d.,]*\d)?(?:\s*[-–]\s*\d(?:[\d.,]*\d)?)?\s*(?:ms|s|min|h|seconds|minutes|hours)\b"
    r"|\d\s*[×x]\s*(?:faster|slower)|volumes?/(?:min|s)\b|steps?/s\b"
)


def docstring_timings(root: Path = PACKAGE) -> list[str]:
    """``module:line: text`` of every docstring line that quotes a duration or a rate."""
    found = []
    for name, file in _modules(root).items():
        lines = file.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            body = getattr(node, "body", None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.Expr):
                continue
            value = body[0].value
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                continue
            for ln in range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1):
                if TIMING.search(lines[ln - 1]):
                    found.append(f"{name}:{ln}: {lines[ln - 1].strip()}")
    return found


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("takes 0.1-0.4 s against ~1.4 s on 2 cores", True),
        ("wall time 18–19 s → 13–14 s", True),
        ("60.0 volumes/min", True),
        ("30-70× slower", True),
        ("a 1 mm grid, σ 2 mm, 160×192×160, 50 bins", False),
        ("every 250 steps (s: the step)", False),
    ],
)
def test_the_timing_finder(tmp_path: Path, text: str, hit: bool) -> None:
    pkg = tmp_path / "motionqc"
    pkg.mkdir()
    (pkg / "m.py").write_text(f'"""Module.\n\n{text}\n"""\n\n\ndef f():\n    """{text}"""\n')
    assert len(docstring_timings(pkg)) == (2 if hit else 0)


def test_no_machine_timings_in_docstrings() -> None:
    assert docstring_timings() == []


MAX_LINES = 500


def test_no_module_over_500_lines() -> None:
    sizes = {name: len(f.read_text().splitlines()) for name, f in _modules().items()}
    assert len(sizes) > 40  # the whole package was read
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_names_before_the_layout_still_import() -> None:
    # what the README shows and users' scripts import (issue #22): re-exports of the new homes
    from motionqc.bids import manifest_from_bids, manifest_from_mrart
    from motionqc.data import VolumeError, load_volume, qc_class, sample_manifest
    from motionqc.models import SFCN
    from motionqc.motion import rigid_matrices, sample_motion, simulate_motion
    from motionqc.physics.motion import simulate_motion as home
    from motionqc.score import motion_score
    from motionqc.soft_labels import soft_labels
    from motionqc.synthetic import build_parameter_table

    assert simulate_motion is home
    assert all(
        callable(f)
        for f in (manifest_from_bids, manifest_from_mrart, load_volume, qc_class, sample_manifest)
    )
    assert issubclass(VolumeError, ValueError) and SFCN.__module__ == "motionqc.models.sfcn"
    assert all(callable(f) for f in (rigid_matrices, sample_motion, motion_score, soft_labels))
    assert build_parameter_table.__module__ == "motionqc.synthetic.motion_sets"


@pytest.mark.parametrize("module", ["standin", "capacity", "runner"])
def test_the_python_m_entry_points_before_the_layout_still_run(module: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", f"motionqc.{module}", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_python_m_sample_data_runs_the_gatherer() -> None:
    # (running it would gather the sample volumes again: `make data` does, before every test)
    import motionqc.data.sample as home
    import motionqc.sample_data as shim

    assert shim.main is home.main and shim.gather is home.gather


def test_the_command_line_imports_no_torch_at_start_up() -> None:
    import subprocess
    import sys

    code = "import sys, motionqc.app.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
