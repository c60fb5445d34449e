"""Run the numbered notebooks: papermill for ``make reproduce``, in place for committed outputs.

``python -m motionqc.runner notebooks/0*.ipynb`` executes each notebook with papermill under the
profile named by ``MOTIONQC_PROFILE`` (or ``--profile``), writing the executed copies to
``build/notebooks/<profile>/`` and a ``runs.tsv`` with each notebook's wall time and the peak
RSS of its kernel. Notebooks write their tables and figures into ``figures/`` themselves.

Kernels start with glibc malloc settings that keep freed memory for reuse
(:data:`motionqc.runtime.allocator.ALLOCATOR_ENV`, unless those variables are set): a CPU training step
then stops faulting its activations in again every time.

``--params FILE`` reads papermill parameters from a YAML file (``make reproduce PARAMS=FILE``):
top-level names go to every notebook whose ``parameters`` cell assigns them, a mapping under a
notebook's stem (``03_pretraining:``) to that notebook only, and a mapping under ``environment:`` sets variables for the kernels (an
already set variable wins; the folders ``MOTIONQC_FIGURES``, ``MOTIONQC_CHECKPOINTS``,
``MOTIONQC_DATA`` and ``MOTIONQC_DATA_ROOT`` are resolved against the runner's working
directory, since kernels run in ``notebooks/``). ``$VAR`` and ``${VAR}`` in string values are
expanded from the environment, so one file can name ``${MOTIONQC_DATA_ROOT}/manifest.tsv``; a
value still holding a ``$`` afterwards (a variable that is not set) is refused with one line, and
so is a name no notebook's ``parameters`` cell assigns (a typo would otherwise change nothing).
``-p NAME VALUE`` overrides both.

``--inplace`` executes notebooks into their own files. ``--publish`` copies the executed
copies over the notebooks once every one of them has run (``make reproduce`` under the sample
profile does): the committed notebooks then carry the outputs of the run whose tables and figures
are in ``figures/``.
"""

from __future__ import annotations

import argparse
import ast
import os
import resource
import sys
import time
from pathlib import Path

import pandas as pd

from motionqc import paths
from motionqc.profiles import get_profile
from motionqc.runtime import allocator

__all__ = ["run_notebook", "read_params", "notebook_parameters", "main"]


_PATH_VARIABLES = {
    "MOTIONQC_FIGURES",
    "MOTIONQC_CHECKPOINTS",
    "MOTIONQC_DATA",
    "MOTIONQC_DATA_ROOT",
}


def _expand(value: object, source: Path) -> object:
    """``$VAR`` / ``${VAR}`` expanded in strings (also inside lists and mappings)."""
    if isinstance(value, str):
        expanded = os.path.expandvars(value)
        if "$" in expanded:
            raise ValueError(f"{source}: {value!r} names an environment variable that is not set")
        return expanded
    if isinstance(value, list):
        return [_expand(v, source) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, source) for k, v in value.items()}
    return value


def notebook_parameters(notebook: str | Path) -> set[str]:
    """The names a notebook's ``parameters``-tagged cell assigns (empty without such a cell).

    Args:
        notebook: The ``.ipynb``.

    Returns:
        The assigned names.

    Raises:
        ValueError: If the parameters cell is not valid Python (one line naming the notebook).
    """
    import nbformat

    names: set[str] = set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code" or "parameters" not in cell.metadata.get("tags", []):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as exc:
            raise ValueError(f"{notebook}: parameters cell does not parse ({exc.msg})") from exc
        for node in tree.body:
            targets = (
                node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            )
            for target in targets:
                for leaf in ast.walk(target) if target is not None else []:
                    if isinstance(leaf, ast.Name):
                        names.add(leaf.id)
    return names


def read_params(
    path: str | Path, notebooks: list[Path]
) -> tuple[dict[str, object], dict[str, dict[str, object]], dict[str, str]]:
    """Read a parameters file (see the module docstring).

    Args:
        path: The YAML file.
        notebooks: The notebooks that will run (their stems, and those of the other notebooks
            in their folders, name per-notebook sections).

    Returns:
        ``(common, per_notebook, environment)``: the top-level parameters; per stem of each
        notebook that runs, what it receives (the top-level names its parameters cell assigns,
        then its own section); and the kernels' environment variables.

    Raises:
        ValueError: If the file is not a YAML mapping, a section is not a mapping, a name is
            assigned by no notebook's parameters cell (by the section's notebook, for a
            section), or a ``$VAR`` is not set (one line naming the file).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read parameters ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: parameters must be a YAML mapping of names to values")
    # a section may name any notebook beside those that run (it is then left out)
    files = {nb.stem: nb for nb in notebooks}
    for folder in {nb.parent for nb in notebooks}:
        files |= {f.stem: f for f in folder.glob("*.ipynb") if f.stem not in files}
    stems = set(files)
    environment = data.pop("environment", {}) or {}
    sections = {k: data.pop(k) for k in list(data) if k in stems}
    bad = [k for k in data if not str(k).isidentifier()]
    if bad:
        raise ValueError(f"{path}: {bad[0]!r} is neither a parameter name nor a notebook")
    for name, section in [("environment", environment), *sections.items()]:
        if not isinstance(section, dict):
            raise ValueError(f"{path}: {name!r} must be a mapping")
    declared = {stem: notebook_parameters(f) for stem, f in files.items()}
    for stem, section in sections.items():
        unknown = sorted(set(map(str, section)) - declared[stem])
        if unknown:
            raise ValueError(f"{path}: {unknown[0]!r} is not a parameter of {stem}")
    anywhere = set().union(*declared.values())
    unknown = sorted(set(map(str, data)) - anywhere)
    if unknown:
        raise ValueError(f"{path}: {unknown[0]!r} is a parameter of no notebook")
    env = {str(k): str(_expand(v, path)) for k, v in environment.items()}
    for name in _PATH_VARIABLES & set(env):
        env[name] = str(Path(env[name]).expanduser().resolve())
    common = _expand(data, path)
    sections = {k: _expand(v, path) for k, v in sections.items()}
    per = {
        nb.stem: {k: v for k, v in common.items() if k in declared[nb.stem]}
        | sections.get(nb.stem, {})
        for nb in notebooks
    }
    return common, per, env  # type: ignore[return-value]


def _peak_child_rss_mb() -> float:
    # ru_maxrss of RUSAGE_CHILDREN is the largest peak RSS among waited-for children, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def run_notebook(
    notebook: str | Path,
    output: str | Path | None = None,
    parameters: dict[str, object] | None = None,
    timeout: int = 3600,
) -> Path:
    """Execute one notebook with papermill (or in place when ``output`` is the notebook).

    Args:
        notebook: The ``.ipynb`` to run.
        output: Where the executed copy goes (default ``build/notebooks/<profile>/<name>``).
        parameters: Values papermill injects after the ``parameters`` cell.
        timeout: Per-cell time limit in seconds.

    Returns:
        The executed notebook's path.
    """
    import papermill as pm

    notebook = Path(notebook).resolve()
    if output is None:
        output = paths.build_dir() / "notebooks" / get_profile().name / notebook.name
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    if output == notebook:
        import nbformat
        from nbclient import NotebookClient

        nb = nbformat.read(notebook, as_version=4)
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(notebook.parent)}},
        ).execute()
        nbformat.write(nb, notebook)
    else:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters or {},
            cwd=str(notebook.parent),
            kernel_name="python3",
            execution_timeout=timeout,
            progress_bar=False,
        )
    return output


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run notebooks in order, stop at the first failure."""
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.runner", description=__doc__.splitlines()[0]
    )
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks to run, in order")
    parser.add_argument(
        "--profile", default=None, help="profile (default: $MOTIONQC_PROFILE or sample)"
    )
    parser.add_argument(
        "--inplace", action="store_true", help="store outputs in the notebooks themselves"
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="after every notebook has run, copy the executed copies over the notebooks",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML file of papermill parameters (common, per notebook stem, environment)",
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="papermill parameter (value parsed as YAML)",
    )
    args = parser.parse_args(argv)
    # Kernels inherit the environment; glibc reads these settings when a kernel starts.
    allocator.set_env()
    if args.profile:
        os.environ["MOTIONQC_PROFILE"] = args.profile
    profile = get_profile()
    import yaml

    per: dict[str, dict[str, object]] = {}
    if args.params is not None:
        try:
            _, per, env = read_params(args.params, args.notebooks)
        except ValueError as exc:
            print(f"motionqc.runner: {exc}", file=sys.stderr)
            return 2
        for name, value in env.items():
            os.environ.setdefault(name, value)
    given = {name: yaml.safe_load(value) for name, value in args.parameter}
    records = []
    total = time.perf_counter()
    for nb in args.notebooks:
        start = time.perf_counter()
        print(f"[motionqc] running {nb.name} (profile {profile.name})", flush=True)
        params = per.get(nb.stem, {}) | given
        out = run_notebook(nb, output=nb if args.inplace else None, parameters=params)
        seconds = time.perf_counter() - start
        records.append(
            {
                "notebook": nb.name,
                "profile": profile.name,
                "seconds": round(seconds, 1),
                "peak_rss_mb_so_far": round(_peak_child_rss_mb(), 1),
                "output": str(out),
            }
        )
        print(f"[motionqc] {nb.name}: {seconds:.1f} s -> {out}", flush=True)
    runs = pd.DataFrame(records)
    if args.publish and not args.inplace:
        import shutil

        for nb, record in zip(args.notebooks, records, strict=True):
            shutil.copyfile(record["output"], nb)
        print(f"[motionqc] outputs published into {len(records)} notebook(s)")
    if not args.inplace:
        log = paths.build_dir() / "notebooks" / profile.name / "runs.tsv"
        runs.to_csv(log, sep="\t", index=False)
        print(f"[motionqc] run log: {log}")
    print(
        f"[motionqc] {len(records)} notebook(s) in {time.perf_counter() - total:.1f} s; "
        f"peak kernel RSS {_peak_child_rss_mb():.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
