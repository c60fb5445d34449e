"""Unseen-head metrics of encoder experiments, with bootstrap intervals and paired differences.

Reads the ``predictions.csv`` that ``benchmarks/recipe_experiment.py`` writes (columns ``split``,
``head``, ``true``, ``pred``) for each run, keeps the ``test`` rows, and prints per run R², Spearman
and MAE with a 95 % bootstrap interval over the test volumes; with two or more runs, the paired
bootstrap of each run's difference from the first (the runs must share their test volumes, as runs
of one recipe with the default test seed do); with ``--ensemble``, the same for the mean of the
runs' predictions::

    .venv/bin/python benchmarks/compare_experiments.py build/experiments/A build/experiments/B \\
        [--ensemble] [--resamples 2000] [--seed 0]
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


def load_test(run: Path) -> pd.DataFrame:
    """The test rows of a run's ``predictions.csv``, in file order."""
    table = pd.read_csv(run / "predictions.csv")
    return table[table["split"] == "test"].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="experiment folders")
    parser.add_argument("--ensemble", action="store_true", help="add the mean of the runs")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tests = [load_test(run) for run in args.runs]
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
    draws = rng.integers(0, len(true), size=(args.resamples, len(true)))
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
    print(
        f"95 % bootstrap intervals: {args.resamples} resamples of the {len(true)} test volumes, seed {args.seed}"
    )


if __name__ == "__main__":
    main()
