"""motionqc.runner: ``--publish`` copies executed notebooks back only when every one of them ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat


def _notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(source))
    nbformat.write(nb, path)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "motionqc.runner", "--profile", "smoke", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _outputs(path: Path) -> list:
    return nbformat.read(path, as_version=4).cells[0].outputs


def test_publish_copies_outputs_into_the_notebooks(tmp_path: Path) -> None:
    first = _notebook(tmp_path / "publish_probe_first.ipynb", "print(6 * 7)")
    second = _notebook(tmp_path / "publish_probe_second.ipynb", "print('second')")
    done = _run("--publish", str(first), str(second))
    assert done.returncode == 0, done.stderr
    assert _outputs(first)[0]["text"].strip() == "42"
    assert _outputs(second)[0]["text"].strip() == "second"


def test_publish_leaves_the_notebooks_alone_when_one_fails(tmp_path: Path) -> None:
    good = _notebook(tmp_path / "publish_probe_good.ipynb", "print('ran')")
    bad = _notebook(tmp_path / "publish_probe_bad.ipynb", "raise SystemExit('broken on purpose')")
    done = _run("--publish", str(good), str(bad))
    assert done.returncode != 0
    assert _outputs(good) == [] and _outputs(bad) == []
    # Without --publish the notebooks are never written either.
    assert _run(str(good)).returncode == 0 and _outputs(good) == []
