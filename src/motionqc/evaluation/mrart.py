"""Validation on real motion: MR-ART (OpenNeuro ds004173) scored by ``motionqc score``.

MR-ART holds 148 adults, each scanned still (``acq-standard``) and twice while moving on
instruction (``acq-headmotion1``, ``acq-headmotion2``), every scan rated by neuroradiologists
1 = clinically good, 2 = medium, 3 = bad (``derivatives/scores.tsv``, columns ``bids_name`` and
``score``). This module builds the manifest with :func:`motionqc.data.bids.manifest_from_mrart`,
scores every volume through the ``motionqc score`` command (:func:`motionqc.app.cli.main`, the
released encoder unless ``--checkpoint`` is given) and reports:

- Spearman's rho between the predicted motion (``motion_mm``) and the MR-ART rating **as given**
  (1 good … 3 bad): positive when more predicted motion goes with a worse rating. Its 95 %
  interval is a percentile bootstrap that resamples subjects (all of a subject's scans together),
  seeded.
- Per condition (``standard``, ``headmotion1``, ``headmotion2``): volumes, volumes scored, mean
  and median ``motion_mm`` and the mean rating.
- The share of subjects whose still scan scores below both of their moving scans (and below each).

Run it as ``python -m motionqc.evaluation.mrart BIDS_DIR OUT_DIR``: the derivative dataset goes
to ``OUT_DIR/motionqc`` (rerunning resumes it), the tables to ``OUT_DIR``:
``mrart_scores.tsv`` (:data:`TABLE_COLUMNS`), ``mrart_summary.json`` and ``mrart_summary.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from motionqc.data.bids import manifest_from_mrart
from motionqc.data.volumes import ManifestError

__all__ = [
    "CONDITIONS",
    "TABLE_COLUMNS",
    "RATING_DIRECTION",
    "find_scores",
    "score_volumes",
    "mrart_table",
    "bootstrap_spearman",
    "summarise",
    "summary_rows",
    "run",
    "main",
]

CONDITIONS: tuple[str, ...] = ("standard", "headmotion1", "headmotion2")
"""MR-ART's acquisitions: still, then moving twice (the ``acq`` entity)."""

TABLE_COLUMNS: tuple[str, ...] = ("bids_name", "subject", "condition", "rating", "motion_mm")
"""Columns of ``mrart_scores.tsv``: ``rating`` is MR-ART's own (1 good … 3 bad)."""

RATING_DIRECTION = (
    "rating is MR-ART's own, as given: 1 = clinically good, 2 = medium, 3 = bad; Spearman rho "
    "> 0 means more predicted motion goes with a worse rating"
)
"""How to read the reported Spearman."""

DERIVATIVE = "motionqc"
"""Subfolder of OUT_DIR that receives the ``motionqc score`` derivative dataset."""


def find_scores(bids_dir: str | Path) -> Path:
    """Return MR-ART's ratings TSV: ``derivatives/scores.tsv``, else ``scores.tsv`` at the root.

    Args:
        bids_dir: The ds004173 root.

    Returns:
        The first of the two that exists.

    Raises:
        ManifestError: If neither exists.
    """
    root = Path(bids_dir)
    for candidate in (root / "derivatives" / "scores.tsv", root / "scores.tsv"):
        if candidate.is_file():
            return candidate
    raise ManifestError(
        f"{root}: no MR-ART ratings (derivatives/scores.tsv or scores.tsv); pass --scores"
    )


def score_volumes(
    bids_dir: str | Path,
    derivatives_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    participant_label: Sequence[str] | None = None,
    options: Sequence[str] = (),
) -> int:
    """Score every T1w of ``bids_dir`` with ``motionqc score`` (its Python entry point).

    Args:
        bids_dir: The BIDS dataset.
        derivatives_dir: The derivative folder ``motionqc score`` writes (and resumes).
        checkpoint: Encoder file; ``None``: the released encoder.
        participant_label: Only these subjects.
        options: Further ``motionqc score`` options (``--device cpu``, ``--no-mosaics`` …).

    Returns:
        ``motionqc score``'s exit status.
    """
    from motionqc.app.cli import main as motionqc_main

    argv = ["score", str(bids_dir), str(derivatives_dir), "participant", *options]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    if participant_label:
        argv += ["--participant-label", *participant_label]
    return motionqc_main(argv)


def mrart_table(manifest: pd.DataFrame, derivatives_dir: str | Path) -> pd.DataFrame:
    """Join the manifest's ratings and conditions with the scores of ``motion_T1w.tsv``.

    Args:
        manifest: From :func:`~motionqc.data.bids.manifest_from_mrart` (``bids_name``,
            ``subject``, ``acq``, ``mrart_score``).
        derivatives_dir: The scored derivative folder.

    Returns:
        One row per manifest volume with :data:`TABLE_COLUMNS`; ``motion_mm`` is NaN where the
        volume was not scored (an error), ``rating`` missing where it is unrated.

    Raises:
        ManifestError: If the derivative folder holds no ``motion_T1w.tsv``.
    """
    path = Path(derivatives_dir) / "motion_T1w.tsv"
    if not path.is_file():
        raise ManifestError(f"{path}: not found (did `motionqc score` run?)")
    scored = pd.read_csv(path, sep="\t", dtype={"bids_name": str, "status": str})
    ok = scored[scored["status"] == "ok"].set_index("bids_name")["motion_mm"].astype(float)
    table = pd.DataFrame(
        {
            "bids_name": manifest["bids_name"].astype(str).to_numpy(),
            "subject": manifest["subject"].astype(str).to_numpy(),
            "condition": manifest["acq"].astype(str).to_numpy(),
            "rating": pd.array(manifest["mrart_score"], dtype="Int64"),
            "motion_mm": manifest["bids_name"].map(ok).astype(float).to_numpy(),
        }
    )
    table["order"] = table["condition"].map({c: i for i, c in enumerate(CONDITIONS)})
    table = table.sort_values(["subject", "order", "bids_name"], kind="stable")
    return table.reset_index(drop=True)[list(TABLE_COLUMNS)]


def _spearman(motion: np.ndarray, rating: np.ndarray) -> float:
    """Spearman's rho, NaN where it is undefined (fewer than 3 pairs, or a constant side)."""
    if len(motion) < 3 or np.ptp(motion) == 0 or np.ptp(rating) == 0:
        return float("nan")
    return float(spearmanr(motion, rating).statistic)


def bootstrap_spearman(
    table: pd.DataFrame, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho, resampling subjects with replacement.

    Args:
        table: Rows with ``subject``, ``motion_mm`` and ``rating`` (both present).
        n_boot: Bootstrap draws.
        seed: Seed of ``numpy.random.default_rng``.
        level: Coverage of the interval.

    Returns:
        ``(low, high)``; NaN where no draw gives a defined rho.
    """
    groups = [
        (g["motion_mm"].to_numpy(float), g["rating"].to_numpy(float))
        for _, g in table.groupby("subject", sort=True)
    ]
    if not groups:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        motion = np.concatenate([groups[i][0] for i in pick])
        rating = np.concatenate([groups[i][1] for i in pick])
        draws.append(_spearman(motion, rating))
    values = np.asarray(draws)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _still_below(table: pd.DataFrame) -> dict[str, object]:
    """Share of subjects whose still scan scores below their moving scans."""
    wide = table.pivot_table(index="subject", columns="condition", values="motion_mm")
    wide = wide.reindex(columns=list(CONDITIONS))
    out: dict[str, object] = {}
    both = wide.dropna()
    out["still_below_both_moving_share"] = (
        float(
            ((both["standard"] < both["headmotion1"]) & (both["standard"] < both["headmotion2"]))
            .astype(float)
            .mean()
        )
        if len(both)
        else None
    )
    out["still_below_both_moving_n_subjects"] = len(both)
    for moving in CONDITIONS[1:]:
        pair = wide[["standard", moving]].dropna()
        out[f"still_below_{moving}_share"] = (
            float((pair["standard"] < pair[moving]).astype(float).mean()) if len(pair) else None
        )
        out[f"still_below_{moving}_n_subjects"] = len(pair)
    return out


def _number(value: float) -> float | None:
    """A float for JSON: ``None`` for NaN."""
    return None if value is None or not np.isfinite(value) else float(value)


def summarise(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, object]:
    """Summarise a :func:`mrart_table`: Spearman with its CI, per-condition scores, still < moving.

    Args:
        table: One row per volume with :data:`TABLE_COLUMNS`.
        n_boot: Bootstrap draws for the interval (subjects resampled).
        seed: The bootstrap's seed.

    Returns:
        A JSON-ready dict: counts, ``spearman_rho`` (MR-ART rating as given, see
        :data:`RATING_DIRECTION`), ``spearman_p``, ``spearman_ci95``, ``conditions`` (per
        condition: ``n_volumes``, ``n_scored``, ``mean_motion_mm``, ``median_motion_mm``,
        ``mean_rating``) and the still-below-moving shares.
    """
    scored = table[table["motion_mm"].notna()]
    pairs = scored[scored["rating"].notna()]
    motion = pairs["motion_mm"].to_numpy(float)
    rating = pairs["rating"].to_numpy(float)
    rho = _spearman(motion, rating)
    p = float(spearmanr(motion, rating).pvalue) if np.isfinite(rho) else float("nan")
    low, high = bootstrap_spearman(pairs, n_boot=n_boot, seed=seed)
    conditions = {}
    for condition in CONDITIONS:
        rows = table[table["condition"] == condition]
        values = rows["motion_mm"].dropna()
        conditions[condition] = {
            "n_volumes": len(rows),
            "n_scored": len(values),
            "mean_motion_mm": _number(values.mean()) if len(values) else None,
            "median_motion_mm": _number(values.median()) if len(values) else None,
            "mean_rating": _number(rows["rating"].dropna().astype(float).mean())
            if rows["rating"].notna().any()
            else None,
        }
    return {
        "n_volumes": len(table),
        "n_scored": len(scored),
        "n_subjects": int(table["subject"].nunique()),
        "n_rated_scored": len(pairs),
        "rating_direction": RATING_DIRECTION,
        "spearman_rho": _number(rho),
        "spearman_p": _number(p),
        "spearman_ci95": [_number(low), _number(high)],
        "bootstrap": {"n_boot": n_boot, "seed": seed, "resampled": "subjects"},
        "conditions": conditions,
        **_still_below(scored),
    }


def summary_rows(summary: dict[str, object]) -> pd.DataFrame:
    """Flatten a :func:`summarise` dict into ``metric``/``value`` rows (``mrart_summary.csv``).

    Args:
        summary: From :func:`summarise` (possibly with ``encoder`` added).

    Returns:
        Nested keys joined by ``.`` (``conditions.standard.mean_motion_mm``); list items get
        their index (``spearman_ci95.0``).
    """
    rows: list[tuple[str, object]] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        else:
            rows.append((prefix, value))

    walk("", summary)
    return pd.DataFrame(rows, columns=["metric", "value"])


def _encoder_info(derivatives_dir: Path) -> dict[str, object]:
    """The model ``motionqc score`` recorded in the derivative's ``dataset_description.json``."""
    try:
        description = json.loads((derivatives_dir / "dataset_description.json").read_text())
        return dict(description["GeneratedBy"][0].get("Model", {}))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}


def run(
    bids_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    participant_label: Sequence[str] | None = None,
    scores: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    score_options: Sequence[str] = (),
) -> dict[str, object]:
    """Build MR-ART's manifest, score it, write and return the summary.

    Args:
        bids_dir: The ds004173 root.
        out_dir: Output folder: ``motionqc/`` (the derivative), ``mrart_scores.tsv``,
            ``mrart_summary.json``, ``mrart_summary.csv``.
        checkpoint: Encoder file; ``None``: the released encoder.
        participant_label: Only these subjects (with or without ``sub-``).
        scores: The ratings TSV (default: :func:`find_scores`).
        n_boot: Bootstrap draws for Spearman's interval.
        seed: The bootstrap's seed.
        score_options: Further ``motionqc score`` options.

    Returns:
        The summary (:func:`summarise`, with ``encoder`` and ``outputs`` added).

    Raises:
        ManifestError: If the dataset, its ratings or the scores cannot be used.
        RuntimeError: If ``motionqc score`` fails (its message is on stderr).
    """
    bids_dir, out = Path(bids_dir), Path(out_dir)
    manifest = manifest_from_mrart(
        bids_dir, scores if scores is not None else find_scores(bids_dir)
    )
    if participant_label:
        wanted = {label.removeprefix("sub-") for label in participant_label}
        manifest = manifest[manifest["subject"].isin(wanted)]
        if manifest.empty:
            raise ManifestError(f"{bids_dir}: no volume of subject(s) {', '.join(sorted(wanted))}")
    out.mkdir(parents=True, exist_ok=True)
    derivatives = out / DERIVATIVE
    status = score_volumes(
        bids_dir,
        derivatives,
        checkpoint=checkpoint,
        participant_label=participant_label,
        options=score_options,
    )
    if status != 0:
        raise RuntimeError(f"motionqc score exited with status {status}")
    table = mrart_table(manifest, derivatives)
    table.to_csv(out / "mrart_scores.tsv", sep="\t", index=False, na_rep="")
    summary = summarise(table, n_boot=n_boot, seed=seed)
    summary["encoder"] = _encoder_info(derivatives)
    summary["outputs"] = {
        "derivatives": str(derivatives),
        "scores": str(out / "mrart_scores.tsv"),
    }
    (out / "mrart_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary_rows(summary).to_csv(out / "mrart_summary.csv", index=False)
    return summary


def _report(summary: dict[str, object]) -> str:
    """A few lines for the terminal."""
    low, high = summary["spearman_ci95"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"MR-ART: {summary['n_scored']}/{summary['n_volumes']} volumes scored, "
        f"{summary['n_subjects']} subjects, {summary['n_rated_scored']} rated and scored",
        f"Spearman rho(motion_mm, MR-ART rating) = {fmt(summary['spearman_rho'])} "
        f"(95 % CI {fmt(low)} to {fmt(high)}, subjects resampled, "
        f"{summary['bootstrap']['n_boot']} draws, seed {summary['bootstrap']['seed']}; "
        f"p = {fmt(summary['spearman_p'])})",
        f"  {RATING_DIRECTION}",
        f"{'condition':12s} {'n':>4s} {'scored':>6s} {'mean mm':>8s} {'median mm':>9s} "
        f"{'mean rating':>11s}",
    ]
    for condition, row in summary["conditions"].items():
        lines.append(
            f"{condition:12s} {row['n_volumes']:4d} {row['n_scored']:6d} "
            f"{fmt(row['mean_motion_mm']):>8s} {fmt(row['median_motion_mm']):>9s} "
            f"{fmt(row['mean_rating']):>11s}"
        )
    lines.append(
        f"still scan below both moving scans: {fmt(summary['still_below_both_moving_share'])} of "
        f"{summary['still_below_both_moving_n_subjects']} subjects"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m motionqc.evaluation.mrart``."""
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.evaluation.mrart",
        description="Score MR-ART (ds004173) with motionqc and compare with its ratings.",
    )
    parser.add_argument("bids_dir", metavar="BIDS_DIR", type=Path, help="the ds004173 root")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="output folder")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="encoder file (default: the released one)"
    )
    parser.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL")
    parser.add_argument(
        "--scores",
        type=Path,
        default=None,
        help="ratings TSV (bids_name, score); default: derivatives/scores.tsv, else scores.tsv",
    )
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--device", default="auto", help="passed to motionqc score")
    parser.add_argument("--num-workers", type=int, default=None, help="passed to motionqc score")
    parser.add_argument("--threads", type=int, default=0, help="passed to motionqc score")
    parser.add_argument(
        "--mosaics", action="store_true", help="render the report's images (off by default)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns 0 on success, 1 if scoring failed, 2 for unusable input."""
    args = build_parser().parse_args(argv)
    options = ["--device", args.device, "--threads", str(args.threads)]
    if args.num_workers is not None:
        options += ["--num-workers", str(args.num_workers)]
    if not args.mosaics:
        options.append("--no-mosaics")
    if args.no_progress:
        options.append("--no-progress")
    try:
        summary = run(
            args.bids_dir,
            args.out_dir,
            checkpoint=args.checkpoint,
            participant_label=args.participant_label,
            scores=args.scores,
            n_boot=args.n_boot,
            seed=args.seed,
            score_options=options,
        )
    except ManifestError as exc:
        print(f"mrart: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"mrart: {exc}", file=sys.stderr)
        return 1
    print(_report(summary))
    print(summary_rows(summary).to_csv(index=False), end="")
    for name, path in summary["outputs"].items():
        print(f"written ({name}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
