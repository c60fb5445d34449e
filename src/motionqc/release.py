"""``make pretrain``: train the released encoder with :mod:`motionqc.recipe`, test it, ship it.

``python -m motionqc.release`` (what ``make pretrain`` runs) renders the motion pool, trains for
the recipe's steps (resumable: run the same command again after an interruption), fits a softmax
temperature on validation, tests the encoder on heads it never saw — corrupted by **TorchIO's own**
``Motion`` at 1 mm and preprocessed as ``motionqc score`` does — and writes
``src/motionqc/weights/motion_encoder.pt`` with ``motion_encoder.json`` beside it (commit,
command, the SHA-256 of every head used, seed, steps, geometry, bins, score convention, the
unseen-head metrics and the file's own SHA-256).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio
from scipy.stats import spearmanr

from motionqc import paths
from motionqc.data import file_sha256, load_volume, preprocess, sample_manifest
from motionqc.encoder import predict_motion, released_encoder_path, save_encoder
from motionqc.models import SFCN
from motionqc.recipe import (
    RECIPES,
    RecipeConfig,
    load_sources,
    predict_logits,
    render_pool,
    train,
    val_inputs,
)
from motionqc.score import SCORE_CONVENTION
from motionqc.soft_labels import BIN_RANGE, N_BINS, SIGMA, decode, predictive_std
from motionqc.synthetic import sample_motion
from motionqc.trainer import kaiming_init, seed_everything

__all__ = [
    "BANDS",
    "TEST_SCORES",
    "fit_temperature",
    "coverage",
    "band_table",
    "unseen_head_predictions",
    "unseen_metrics",
    "main",
]

TEST_SCORES = (0.0, 0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 4.0)
"""True scores (mm) of the unseen-head test: each corrupted by TorchIO's ``Motion``."""

BANDS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
"""Edges of the bands of true score the per-band table reports ([0, 0.5], …, [3, 4] mm)."""


def fit_temperature(
    log_probs: torch.Tensor,
    truth: torch.Tensor,
    bin_range: Sequence[float] = BIN_RANGE,
    grid: Sequence[float] = tuple(np.round(np.arange(0.5, 6.01, 0.05), 2)),
) -> float:
    """Softmax temperature minimising the Gaussian NLL of the truth under (mean, std).

    Args:
        log_probs: Validation outputs ``(N, n_bins)``.
        truth: Validation labels ``(N,)``.
        bin_range: The bins.
        grid: Temperatures tried.

    Returns:
        The best temperature (1 is no change).
    """
    y = truth.double()
    best, best_nll = 1.0, float("inf")
    for t in grid:
        out = log_probs.float() / float(t)
        mean = decode(out, bin_range).double()
        std = predictive_std(out, bin_range).double().clamp_min(1e-3)
        nll = float((torch.log(std) + 0.5 * ((y - mean) / std) ** 2).mean())
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def coverage(table: pd.DataFrame) -> dict[str, float]:
    """Share of truths within the predicted ±1 and ±2 std (68 % / 95 % if calibrated)."""
    err = (table["pred"] - table["true"]).abs()
    return {
        "within_1std": float((err <= table["std"]).mean()),
        "within_2std": float((err <= 2 * table["std"]).mean()),
    }


def band_table(table: pd.DataFrame, edges: Sequence[float] = BANDS) -> pd.DataFrame:
    """Per band of true score: count, median prediction, median error and median |error|.

    Args:
        table: ``true`` and ``pred`` columns (mm).
        edges: Band edges; a truth equal to an inner edge goes to the band above it, the last
            band is closed.

    Returns:
        One row per band: ``band``, ``n``, ``median_true``, ``median_pred``, ``median_error``,
        ``median_abs_error``.
    """
    rows = []
    truth = table["true"].round(6)  # a target on an edge (1.5 mm solved to 1e-10) stays on it
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        last = hi == edges[-1]
        keep = (truth >= lo) & ((truth <= hi) if last else (truth < hi))
        sub = table[keep]
        err = sub["pred"] - sub["true"]
        rows.append(
            {
                "band": f"[{lo:g}, {hi:g}]" if last else f"[{lo:g}, {hi:g})",
                "n": len(sub),
                "median_true": float(sub["true"].median()) if len(sub) else np.nan,
                "median_pred": float(sub["pred"].median()) if len(sub) else np.nan,
                "median_error": float(err.median()) if len(sub) else np.nan,
                "median_abs_error": float(err.abs().median()) if len(sub) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def unseen_head_predictions(
    model: SFCN,
    meta: Mapping[str, object],
    heads: Mapping[str, str | Path],
    *,
    scores: Sequence[float] = TEST_SCORES,
    draws: int = 4,
    seed: int = 12345,
) -> pd.DataFrame:
    """Corrupt each head with TorchIO's ``Motion`` at known scores and predict them.

    Each head is loaded at its own resolution (canonical orientation), corrupted by
    ``tio.Motion(..., image_interpolation="linear")`` with parameters whose score under
    :data:`motionqc.score.SCORE_CONVENTION` is the target (``draws`` independent motions per
    score), then preprocessed to the encoder's grid exactly as ``motionqc score`` does.

    Args:
        model: The encoder.
        meta: Its metadata (:func:`motionqc.encoder.load_encoder`).
        heads: Head id → NIfTI file; none may have been used in training.
        scores: True scores (mm).
        draws: Motions per score.
        seed: Base seed.

    Returns:
        One row per volume: ``head``, ``draw``, ``true``, ``pred``, ``std``, ``n``.
    """
    rows, images = [], []
    for h_idx, (head, path) in enumerate(heads.items()):
        nii = load_volume(path)
        image = tio.ScalarImage(
            tensor=torch.from_numpy(np.asarray(nii.dataobj, dtype=np.float32))[None],
            affine=nii.affine,
        )
        for s_idx, target in enumerate(scores):
            for d in range(draws):
                row_seed = int(np.random.SeedSequence([seed, h_idx, s_idx, d]).generate_state(1)[0])
                p = sample_motion(
                    float(target),
                    row_seed,
                    affine=image.affine,
                    shape=image.shape[1:],
                    radius=SCORE_CONVENTION.radius,
                    pairs=SCORE_CONVENTION.pairs,
                    convention=SCORE_CONVENTION.rotations,
                )
                moved = image
                if target > 0:
                    motion = tio.Motion(
                        degrees=np.asarray(p["degrees"]),
                        translation=np.asarray(p["translation"]),
                        times=np.asarray(p["times"]),
                        image_interpolation="linear",
                    )
                    moved = motion(image)
                x = preprocess(moved, float(meta["spacing_mm"]), meta["shape"]).data.float()
                images.append(x)
                rows.append({"head": head, "draw": d, "true": float(p["score"]), "n": int(p["n"])})
    pred, std = predict_motion(
        model,
        images,
        bin_range=meta["bin_range"],
        batch_size=4,
        input_intensity=str(meta.get("input_intensity", "unit_range")),
        temperature=float(meta.get("temperature", 1.0)),
    )
    out = pd.DataFrame(rows)
    out["pred"], out["std"] = pred, std
    return out


def unseen_metrics(table: pd.DataFrame) -> dict[str, float]:
    """R², Spearman, MAE, RMSE and ±1/±2 std coverage of a prediction table."""
    truth = table["true"].to_numpy(np.float64)
    err = table["pred"].to_numpy(np.float64) - truth
    ss = float(((truth - truth.mean()) ** 2).sum())
    return {
        "n": len(table),
        "r2": 1 - float((err**2).sum()) / ss if ss > 0 else float("nan"),
        "spearman": float(spearmanr(truth, table["pred"]).statistic),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        **coverage(table),
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(paths.repo_root()), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(paths.repo_root()), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError, RuntimeError):
        return "unknown"


def run(
    config: RecipeConfig,
    *,
    out: Path,
    run_dir: Path,
    test_heads: Sequence[str] = ("colin27",),
    num_workers: int = 2,
    draws: int = 4,
    command: str = "",
) -> dict[str, object]:
    """Train, calibrate, test and write the encoder and its JSON (see the module docstring).

    Args:
        config: The recipe.
        out: Output ``.pt`` path (its ``.json`` goes beside it).
        run_dir: Checkpoints and the pool cache (resumable).
        test_heads: Heads kept out of training and used for the unseen-head test.
        num_workers: Rendering processes.
        draws: Motions per test score and head.
        command: The command line recorded in the JSON.

    Returns:
        The provenance written to the JSON.

    Raises:
        ValueError: If a test head is also a training head.
    """
    overlap = sorted(set(test_heads) & set(config.train_heads))
    if overlap:
        raise ValueError(f"test head(s) also used for training: {', '.join(overlap)}")
    manifest = sample_manifest()
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    seed_everything(config.seed)
    t0 = time.perf_counter()
    sources = load_sources(files, config)
    cache = paths.build_dir() / "cache" / "recipe"  # keyed by what determines each pool
    val = render_pool(
        sources, config, "val", config.val_size, cache_dir=cache, num_workers=num_workers
    )
    pool = render_pool(
        sources, config, "train", config.pool_size, cache_dir=cache, num_workers=num_workers
    )
    render_s = time.perf_counter() - t0
    labels = (torch.tensor(pool[1]["label"].to_numpy()), torch.tensor(val[1]["label"].to_numpy()))
    del sources
    model = kaiming_init(SFCN(n_outputs=N_BINS, channels=config.channels, dropout=config.dropout))
    history = train(model, (pool[0], labels[0]), (val[0], labels[1]), config, run_dir / "train")
    train_s = float(history["seconds"].iloc[-1]) if len(history) else 0.0
    val_out = predict_logits(model, val_inputs(val[0], config))
    temperature = fit_temperature(val_out, labels[1])
    del pool
    meta = {
        "spacing_mm": config.spacing_mm,
        "shape": config.shape,
        "bin_range": BIN_RANGE,
        "input_intensity": "percentile",
        "temperature": temperature,
    }
    tested = {h: files[h] for h in test_heads if h in files}
    table = unseen_head_predictions(model, meta, tested, draws=draws, seed=config.seed + 12345)
    raw = unseen_head_predictions(
        model, meta | {"temperature": 1.0}, tested, draws=draws, seed=config.seed + 12345
    )
    metrics = unseen_metrics(table)
    bands = band_table(table)
    provenance: dict[str, object] = {
        "format": "motionqc-encoder-release/1",
        "file": out.name,
        "commit": _commit(),
        "command": command,
        "recipe": config.as_dict(),
        "score_convention": SCORE_CONVENTION.as_dict(),
        "geometry": {"spacing_mm": config.spacing_mm, "shape": list(config.shape)},
        "bins": {"bin_range": list(BIN_RANGE), "n_bins": N_BINS, "sigma": SIGMA},
        "input_intensity": "percentile",
        "temperature": temperature,
        "data": {
            h: {
                "role": "train" if h in config.train_heads else "test",
                "sha256": file_sha256(files[h]),
            }
            for h in [*config.train_heads, *tested]
        },
        "seed": config.seed,
        "steps": config.steps,
        "validation": history.iloc[-1].to_dict() if len(history) else {},
        "unseen_heads": {
            "heads": list(tested),
            "motion": "torchio.Motion(image_interpolation='linear') at each head's own resolution",
            "scores_mm": list(TEST_SCORES),
            "draws": draws,
            "metrics": metrics,
            "coverage_before_temperature": coverage(raw),
            "bands": bands.to_dict("records"),
        },
        "timing_s": {"pool": render_s, "train": train_s},
        "machine": {
            "cpus": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "torch": str(torch.__version__),
        },
    }
    save_encoder(
        out,
        model,
        spacing_mm=config.spacing_mm,
        shape=config.shape,
        info={"recipe": config.name, "unseen_heads": metrics, "seed": config.seed},
        input_intensity="percentile",
        temperature=temperature,
        score_convention=SCORE_CONVENTION.as_dict(),
    )
    provenance["sha256"] = file_sha256(out)
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    run_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(run_dir / "unseen_head_predictions.csv", index=False)
    return provenance


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``make pretrain`` (``python -m motionqc.release --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="release")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .pt (default: the package's weights/motion_encoder.pt for "
        "the release recipe, checkpoints/recipe-<name>/motion_encoder.pt otherwise)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="checkpoints and pool cache (default: checkpoints/recipe-<name>)",
    )
    parser.add_argument("--test-heads", nargs="+", default=["colin27"])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--draws", type=int, default=4, help="motions per test score and head")
    args = parser.parse_args(argv)
    config = RECIPES[args.recipe]
    if args.steps is not None:
        if args.steps < 1:
            parser.error("--steps must be at least 1")
        config = config.replace(steps=args.steps)
    run_dir = args.run_dir or paths.checkpoints_dir() / f"recipe-{config.name}"
    out = args.out or (
        released_encoder_path() if config.name == "release" else run_dir / "motion_encoder.pt"
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    command = "python -m motionqc.release " + " ".join(sys.argv[1:] if argv is None else argv)
    prov = run(
        config,
        out=out,
        run_dir=run_dir,
        test_heads=args.test_heads,
        num_workers=args.num_workers,
        draws=args.draws,
        command=command.strip(),
    )
    m = prov["unseen_heads"]["metrics"]  # type: ignore[index]
    print(
        f"wrote {out} ({prov['sha256'][:12]}): unseen heads R² {m['r2']:.3f}, Spearman "
        f"{m['spearman']:.3f}, MAE {m['mae']:.3f} mm, ±1/±2 std {m['within_1std']:.2f}/"
        f"{m['within_2std']:.2f}, temperature {prov['temperature']:.2f}"
    )
    print(pd.DataFrame(prov["unseen_heads"]["bands"]).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
