"""The motion encoder's test on heads it never saw, under TorchIO's own ``Motion``.

Each test head is loaded at its own resolution (:func:`load_native`), corrupted by
``tio.Motion`` at known scores (:func:`corrupt_with_torchio`, :func:`torchio_corruptions`) and
preprocessed as ``motionqc score`` does (:func:`unseen_head_inputs`); :func:`predict_table`
scores the volumes, :func:`split_metrics` and :func:`band_table` summarise them (R², Spearman,
MAE, ±1/±2 std coverage; median prediction per band of true score), and :func:`fit_temperature`
calibrates the predictive spread on validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio
from scipy.stats import spearmanr

from motionqc.data.detail import encoder_input
from motionqc.data.volumes import load_volume
from motionqc.models.encoder import predict_motion
from motionqc.models.sfcn import SFCN
from motionqc.models.soft_labels import BIN_RANGE, decode, predictive_std
from motionqc.synthetic.parameters import sample_scored_motion

__all__ = [
    "BANDS",
    "RANK_RESOLUTION_MM",
    "TEST_SCORES",
    "band_table",
    "corrupt_with_torchio",
    "coverage",
    "fit_temperature",
    "head_table",
    "load_native",
    "predict_table",
    "split_metrics",
    "torchio_corruptions",
    "unseen_head_inputs",
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


def load_native(path: str | Path, grid_mm: float | None = None) -> tio.ScalarImage:
    """A head at its own resolution (:func:`motionqc.data.volumes.load_volume`), or on a grid.

    Args:
        path: The NIfTI file.
        grid_mm: ``None`` keeps the file's own voxels; a voxel size puts the head in canonical
            orientation on an isotropic grid of that size (TorchIO's ``Resample``, linear), as
            the corpus's 2 mm heads are put on the 1 mm grid an acquisition would have.
    """
    nii = load_volume(path)
    tensor = torch.from_numpy(np.asarray(nii.dataobj, dtype=np.float32))[None]
    image = tio.ScalarImage(tensor=tensor, affine=nii.affine)
    if grid_mm is None:
        return image
    return tio.Resample(float(grid_mm))(tio.ToCanonical()(image))


def corrupt_with_torchio(
    image: tio.ScalarImage, target: float, seed: int
) -> tuple[tio.ScalarImage, dict]:
    """Corrupt an image with **TorchIO's own** ``Motion`` at a score under ``SCORE_CONVENTION``.

    Args:
        image: The head (one channel).
        target: Wanted score, mm (0: the image itself).
        seed: Seed of the parameter draw (:func:`motionqc.synthetic.parameters.sample_scored_motion`).

    Returns:
        ``(moved, params)``; ``params["score"]`` is the true score.
    """
    p = sample_scored_motion(target, seed, affine=image.affine, shape=image.shape[1:])
    if target <= 0:
        return image, p
    motion = tio.Motion(
        degrees=np.asarray(p["degrees"]),
        translation=np.asarray(p["translation"]),
        times=np.asarray(p["times"]),
        image_interpolation="linear",
    )
    return motion(image), p


def torchio_corruptions(
    heads: Mapping[str, str | Path],
    *,
    scores: Sequence[float] = TEST_SCORES,
    draws: int = 4,
    seed: int = 12345,
    grid_mm: float | None = None,
) -> Iterator[tuple[str, int, int, tio.ScalarImage, dict]]:
    """Each head corrupted by TorchIO's ``Motion`` at known scores, at its own resolution.

    Every ``(head, score, draw)`` has its own seed (``SeedSequence([seed, head index, score index,
    draw])``), so a volume does not depend on which others are drawn.

    Args:
        heads: Head id → NIfTI file.
        scores: True scores (mm).
        draws: Motions per score.
        seed: Base seed.
        grid_mm: Put each head on an isotropic grid of this voxel size first (:func:`load_native`).

    Yields:
        ``(head, score index, draw, moved image, params)``; ``params["score"]`` is the true score.
    """
    for h_idx, (head, path) in enumerate(heads.items()):
        image = load_native(path, grid_mm)
        for s_idx, target in enumerate(scores):
            for d in range(draws):
                row_seed = int(np.random.SeedSequence([seed, h_idx, s_idx, d]).generate_state(1)[0])
                moved, p = corrupt_with_torchio(image, float(target), row_seed)
                yield head, s_idx, d, moved, p


def unseen_head_inputs(
    meta: Mapping[str, object],
    heads: Mapping[str, str | Path],
    *,
    scores: Sequence[float] = TEST_SCORES,
    draws: int = 4,
    seed: int = 12345,
    grid_mm: float | None = None,
) -> tuple[pd.DataFrame, list[torch.Tensor]]:
    """Corrupt each head with TorchIO's ``Motion`` at known scores; preprocess as inference does.

    Each head is loaded at its own resolution (canonical orientation), corrupted by
    ``tio.Motion(..., image_interpolation="linear")`` with parameters whose score under
    :data:`motionqc.physics.score.SCORE_CONVENTION` is the target (:func:`torchio_corruptions`), then
    preprocessed to the encoder's grid exactly as ``motionqc score`` does.

    Args:
        meta: The encoder's metadata (``spacing_mm``, ``shape``, ``detail_mm``).
        heads: Head id → NIfTI file; none may have been used in training.
        scores: True scores (mm).
        draws: Motions per score.
        seed: Base seed.
        grid_mm: Put each head on an isotropic grid of this voxel size before the motion
            (``None``: its own voxels).

    Returns:
        ``(rows, inputs)``: one row per volume (``head``, ``draw``, ``true``, ``n``) and its
        preprocessed ``(C, X, Y, Z)`` tensor (:func:`motionqc.data.detail.encoder_input`).
    """
    rows, images = [], []
    for head, _, d, moved, p in torchio_corruptions(
        heads, scores=scores, draws=draws, seed=seed, grid_mm=grid_mm
    ):
        images.append(
            encoder_input(moved, float(meta["spacing_mm"]), meta["shape"], meta.get("detail_mm"))
        )
        rows.append({"head": head, "draw": d, "true": float(p["score"]), "n": int(p["n"])})
    return pd.DataFrame(rows), images


def predict_table(
    model: SFCN,
    meta: Mapping[str, object],
    rows: pd.DataFrame,
    inputs: Sequence[torch.Tensor],
    *,
    precision: str = "fp32",
) -> pd.DataFrame:
    """``rows`` with the encoder's ``pred`` and ``std`` (its input scaling and temperature)."""
    pred, std = predict_motion(
        model,
        list(inputs),
        bin_range=meta["bin_range"],
        batch_size=4,
        precision=precision,
        input_intensity=str(meta.get("input_intensity", "unit_range")),
        temperature=float(meta.get("temperature", 1.0)),
    )
    out = rows.copy()
    out["pred"], out["std"] = pred, std
    return out


RANK_RESOLUTION_MM = 1e-6
"""Scores are ranked at this resolution: the sampler reaches its target to ~1e-6 mm, so the draws
of one test score tie (their last digits are root-finding and floating-point noise: ranked as
they are, two runs of notebook 03 with the same encoder and predictions gave 0.837 and 0.831)."""


def split_metrics(table: pd.DataFrame) -> dict[str, float]:
    """R², Spearman (ties at :data:`RANK_RESOLUTION_MM`), MAE, RMSE and ±1/±2 std coverage."""
    truth = table["true"].to_numpy(np.float64)
    pred = table["pred"].to_numpy(np.float64)
    err = pred - truth
    ss = float(((truth - truth.mean()) ** 2).sum())
    digits = int(round(-np.log10(RANK_RESOLUTION_MM)))
    return {
        "n": len(table),
        "r2": 1 - float((err**2).sum()) / ss if ss > 0 else float("nan"),
        "spearman": float(spearmanr(truth.round(digits), pred.round(digits)).statistic),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        **coverage(table),
    }


def head_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per test head: its clean reading, within-head ranking and offset.

    Args:
        table: ``head``, ``true`` and ``pred`` columns (mm), one row per test volume.

    Returns:
        One row per head: ``head``, ``n``, ``clean_pred`` (median prediction of its motion-free
        volumes), ``spearman`` (within the head, ties at :data:`RANK_RESOLUTION_MM`),
        ``offset`` (median of prediction − truth) and ``mae``.
    """
    digits = int(round(-np.log10(RANK_RESOLUTION_MM)))
    rows = []
    for head, sub in table.groupby("head", sort=False):
        truth, pred = sub["true"].to_numpy(np.float64), sub["pred"].to_numpy(np.float64)
        clean = pred[truth.round(digits) == 0]
        varied = len(np.unique(truth.round(digits))) > 1
        rows.append(
            {
                "head": head,
                "n": len(sub),
                "clean_pred": float(np.median(clean)) if len(clean) else float("nan"),
                "spearman": float(spearmanr(truth.round(digits), pred.round(digits)).statistic)
                if varied
                else float("nan"),
                "offset": float(np.median(pred - truth)),
                "mae": float(np.abs(pred - truth).mean()),
            }
        )
    return pd.DataFrame(rows)
