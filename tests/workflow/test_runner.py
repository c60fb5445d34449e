"""motionqc.runner: ``--publish`` copies executed notebooks back only when every one of them ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from motionqc import paths


def _notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(source))
    nbformat.write(nb, path)
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "motionqc.runner", "--profile", "smoke", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
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


def test_params_file_sets_parameters_per_notebook_and_the_environment(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "language": "python",
        "display_name": "Python 3",
    }
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell("x = 1\nname = 'default'")
    params.metadata["tags"] = ["parameters"]
    nb.cells += [
        params,
        nbformat.v4.new_code_cell("import os\nprint(x, name, os.environ['MQC_PROBE'])"),
    ]
    probe = tmp_path / "params_probe.ipynb"
    nbformat.write(nb, probe)
    nbformat.write(nb, tmp_path / "params_other.ipynb")  # its section is left out, not injected
    (tmp_path / "p.yaml").write_text(
        "environment:\n  MQC_PROBE: from-file\n"
        "x: 2\n"
        "params_probe:\n  name: ${MQC_BASE}/b\n"
        "params_other:\n  x: 99\n  name: other\n"
    )
    env = {**os.environ, "MQC_BASE": "/data"}
    done = _run("--params", str(tmp_path / "p.yaml"), "-p", "x", "3", str(probe), env=env)
    assert done.returncode == 0, done.stderr
    out = paths.build_dir() / "notebooks" / "smoke" / probe.name
    printed = nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"].strip()
    assert printed == "3 /data/b from-file"  # -p wins over the file; a section for one notebook
    sources = [c.source for c in nbformat.read(out, as_version=4).cells]
    assert not any("x = 99" in src or "other" in src for src in sources)
    # a variable that is not set is refused with one line naming the file
    env.pop("MQC_BASE")
    failed = _run("--params", str(tmp_path / "p.yaml"), str(probe), env=env)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"motionqc.runner: {tmp_path / 'p.yaml'}: '${{MQC_BASE}}/b' names an environment "
        "variable that is not set"
    ]


def test_params_file_names_only_what_the_notebooks_declare(tmp_path: Path) -> None:
    """Top-level names reach only the notebooks that declare them; an unknown name is refused."""
    declared = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1  # a comment\nlimit: int = 2\na, b = 3, 4")
    params.metadata["tags"] = ["parameters"]
    declared.cells += [params, nbformat.v4.new_code_cell("print(x, limit, a, b)")]
    for nb in (declared,):
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "language": "python",
            "display_name": "Python 3",
        }
        nb.metadata["language_info"] = {"name": "python"}
    probe = tmp_path / "declares_probe.ipynb"
    nbformat.write(declared, probe)
    plain = _notebook(tmp_path / "declares_nothing.ipynb", "print('plain')")
    (tmp_path / "ok.yaml").write_text("x: 5\nb: 7\ndeclares_probe:\n  limit: 6\n")
    done = _run("--params", str(tmp_path / "ok.yaml"), str(probe), str(plain))
    assert done.returncode == 0, done.stderr
    out = paths.build_dir() / "notebooks" / "smoke"
    assert (
        nbformat.read(out / probe.name, as_version=4).cells[-1].outputs[0]["text"].strip()
        == "5 6 3 7"
    )
    plain_cells = nbformat.read(out / plain.name, as_version=4).cells
    assert [c.source for c in plain_cells] == [
        "print('plain')"
    ]  # nothing injected where nothing is declared
    for text, message in [
        ("x: 5\ntypo_name: 1\n", "'typo_name' is a parameter of no notebook"),
        ("declares_probe:\n  x: 1\n  nme: 2\n", "'nme' is not a parameter of declares_probe"),
    ]:
        (tmp_path / "bad.yaml").write_text(text)
        failed = _run("--params", str(tmp_path / "bad.yaml"), str(probe), str(plain))
        assert failed.returncode == 2
        assert failed.stderr.strip().splitlines() == [
            f"motionqc.runner: {tmp_path / 'bad.yaml'}: {message}"
        ]
