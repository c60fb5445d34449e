"""Unseen-head metrics of encoder experiments, with bootstrap intervals and paired differences.

Reads the ``predictions.csv`` that ``benchmarks/recipe_experiment.py`` writes (columns ``split``,
``head``, ``true``, ``pred``) for each run, keeps the ``test`` rows, and prints per run R², Spearman
and MAE with a 95 % bootstrap interval over the test volumes; with two or more runs, the paired
bootstrap of each run's difference from the first (the runs must share their test volumes, as runs
of one recipe with the default test seed do); with ``--ensemble``, the same for the mean of the
runs' predictions. ``--by-head`` resamples whole test heads instead of volumes (the volumes of
one head are not independent: the interval a test over many heads needs); ``--set NAME`` keeps the
rows of one ``test_set`` (``benchmarks/heldout_heads.py`` writes it: ``held_out``,
``cross_scanner``)::

    .venv/bin/python benchmarks/compare_experiments.py build/experiments/A build/experiments/B \\
        [--ensemble] [--resamples 2000] [--seed 0] [--by-head] [--set held_out]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from motionqc.evaluation.encoder_test import split_metrics

METRICS = ("r2", "spearman", "mae")


def metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R², Spearman's rho and MAE as notebook 03 computes them (:func:`split_metrics`)."""
    table = pd.DataFrame({"true": true, "pred": pred, "std": np.ones_like(pred)})
    found = split_metrics(table)
    return {m: found[m] for m in METRICS}


def load_test(run: Path, test_set: str | None = None) -> pd.DataFrame:
    """The test rows of a run's ``predictions.csv`` (of one ``test_set``), in file order."""
    table = pd.read_csv(run / "predictions.csv")
    if "split" in table.columns:
        table = table[table["split"] == "test"]
    if test_set is not None:
        table = table[table["test_set"] == test_set]
    return table.reset_index(drop=True)


def resample(rng: np.random.Generator, heads: np.ndarray, n: int, by_head: bool) -> np.ndarray:
    """``n`` bootstrap draws of row indices: of the rows, or of whole heads (all their rows)."""
    if not by_head:
        return rng.integers(0, len(heads), size=(n, len(heads)))
    names = np.unique(heads)
    rows = {h: np.flatnonzero(heads == h) for h in names}
    picks = rng.integers(0, len(names), size=(n, len(names)))
    return [np.concatenate([rows[names[k]] for k in pick]) for pick in picks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="experiment folders")
    parser.add_argument("--ensemble", action="store_true", help="add the mean of the runs")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--by-head", action="store_true", help="resample heads, not volumes")
    parser.add_argument("--set", default=None, help="keep one test_set (heldout_heads.py's)")
    args = parser.parse_args()
    tests = [load_test(run, args.set) for run in args.runs]
    true = tests[0]["true"].to_numpy(np.float64)
    for run, test in zip(args.runs, tests, strict=True):
        if len(test) != len(true) or not np.allclose(test["true"].to_numpy(), true, atol=1e-6):
            raise SystemExit(f"{run}: its test volumes differ from {args.runs[0]}'s")
    preds = {
        str(run): test["pred"].to_numpy(np.float64)
        for run, test in zip(args.runs, tests, strict=True)
    }
    if args.ensemble:
        preds["mean of the runs"] = np.mean(list(preds.values()), axis=0)
    rng = np.random.default_rng(args.seed)
    draws = resample(rng, tests[0]["head"].to_numpy(), args.resamples, args.by_head)
    boot = {
        name: np.array([list(metrics(true[i], p[i]).values()) for i in draws])
        for name, p in preds.items()
    }
    point = {name: metrics(true, p) for name, p in preds.items()}
    rows = []
    first = next(iter(preds))
    for name in preds:
        row = {"run": name, "n": len(true)}
        for j, m in enumerate(METRICS):
            lo, hi = np.percentile(boot[name][:, j], [2.5, 97.5])
            row[m] = point[name][m]
            row[f"{m}_ci"] = f"{lo:.2f}-{hi:.2f}"
            if name != first:
                diff = boot[name][:, j] - boot[first][:, j]
                dlo, dhi = np.percentile(diff, [2.5, 97.5])
                row[f"{m}_minus_first"] = point[name][m] - point[first][m]
                row[f"{m}_diff_ci"] = f"{dlo:.2f}-{dhi:.2f}"
        rows.append(row)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    unit = (
        f"{tests[0]['head'].nunique()} test heads" if args.by_head else f"{len(true)} test volumes"
    )
    print(f"95 % bootstrap intervals: {args.resamples} resamples of the {unit}, seed {args.seed}")


if __name__ == "__main__":
    main()
