"""A demo QC set with SIMULATED ratings, for the sample profile (the sample heads have no ratings).

Each volume is a pseudo-subject (:func:`motionqc.synthetic.heads.augment_heads`) corrupted by artefacts
drawn **independently of one another** (:func:`corrupt`): k-space motion and artefacts the motion
encoder was never trained on (Gaussian noise, ghosting, bias field, blur, k-space spikes;
TorchIO's deterministic transforms with seeded parameters). Each artefact is present with its
own probability (:data:`ARTEFACT_PROBABILITY`) at a severity drawn uniformly on its own range;
no latent "badness" ties them together, so how much of a grade motion explains is a measured
quantity, not a design choice.

Artefacts are simulated and rated on a finer grid than the models see (``make_qc_set(grid=...)``),
as a scan is acquired and rated at its own resolution and then resampled to the encoder's grid by
the inference preprocessing (:func:`motionqc.data.volumes.preprocess`); at the 4 mm encoder grid k-space
motion is mostly averaged away. The grade comes from **image-quality measures of each result
against its clean source** (:func:`quality_measures`): the relative RMS of the difference's
detail inside the head (smooth inhomogeneity discounted), the error in the background (ghosts,
spikes, ringing), and the loss of edge sharpness (blur, motion smearing). Two simulated
raters (:data:`RATERS`) weigh the measures differently, each with its own log-normal noise, so they
disagree as real raters do. Each rater's grade cut-offs are the quantiles of its perceived
degradation **on the training split only** that give the poster's class imbalance
(QC 1/2 : 3 : 4 ≈ 7 : 38 : 70; :func:`grade_cutoffs`); validation and test volumes are graded with
those cut-offs. The labels are synthetic — say so wherever they are shown — and the same
notebooks run on real ratings (a manifest with ``qc_score``) under ``paper``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torchio as tio

from motionqc.data.detail import encoder_input
from motionqc.physics.motion import simulate_motion
from motionqc.qc_task import qc_class
from motionqc.synthetic.heads import head_of
from motionqc.synthetic.parameters import sample_motion

__all__ = [
    "ARTEFACTS",
    "ARTEFACT_PROBABILITY",
    "ARTEFACT_RANGE",
    "MEASURES",
    "POSTER_SHARES",
    "RATERS",
    "corrupt",
    "grade",
    "grade_cutoffs",
    "make_qc_set",
    "perceive",
    "quality_measures",
]

POSTER_SHARES: tuple[int, int, int] = (7, 38, 70)
"""The poster's training split per QC class (1/2, 3, 4)."""

ARTEFACTS: tuple[str, ...] = ("motion", "noise", "ghosting", "bias", "blur", "spike")

ARTEFACT_PROBABILITY: dict[str, float] = {
    "motion": 0.6,
    "noise": 0.3,
    "ghosting": 0.2,
    "bias": 0.3,
    "blur": 0.25,
    "spike": 0.1,
}
"""Probability that each artefact is present, drawn independently per volume."""

ARTEFACT_RANGE: dict[str, tuple[str, float]] = {
    "motion": ("motion_mm", 4.0),
    "noise": ("noise_std", 0.05),
    "ghosting": ("ghosting", 0.3),
    "bias": ("bias", 0.4),
    "blur": ("blur_mm", 1.5),
    "spike": ("spike", 0.3),
}
"""Artefact → (severity column, upper end of its uniform severity range)."""

MEASURES: tuple[str, ...] = ("nrmse", "background_error", "sharpness_loss")
"""The image-quality measures of :func:`quality_measures`, in the order :data:`RATERS` weigh them."""

RATERS: dict[str, dict[str, float]] = {
    "rater1": {"nrmse": 1.0, "background_error": 4.0, "sharpness_loss": 1.0, "noise": 0.25},
    "rater2": {"nrmse": 0.5, "background_error": 8.0, "sharpness_loss": 2.0, "noise": 0.35},
}
"""Each simulated rater's weight per measure and the standard deviation of its log-normal noise.
Relative to the error inside the head, rater 2 weighs the background error (ghosts, spikes) and the
lost sharpness four times as much as rater 1 does, and is noisier."""


def corrupt(
    image: tio.ScalarImage,
    seed: int,
    probability: Mapping[str, float] = ARTEFACT_PROBABILITY,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Corrupt a head with artefacts drawn independently of one another.

    Each artefact of :data:`ARTEFACTS` is present with its own ``probability``; a present one gets
    a severity drawn uniformly between 5 % and 100 % of its :data:`ARTEFACT_RANGE` (motion: a target score
    in mm, reached by :func:`motionqc.synthetic.parameters.sample_motion`). They are applied in acquisition
    order: motion, blur, bias field, ghosting, spikes, noise.

    Args:
        image: Preprocessed head (one channel, intensities ÷ mean).
        seed: Seed of every draw.
        probability: Artefact → probability of being present.

    Returns:
        ``(volume (X, Y, Z) float32, severities)``: ``motion_mm`` (the motion score), and the
        parameter of each other artefact (0 when absent).
    """
    rng = np.random.default_rng(seed)
    data = image.data[0].float()
    sev: dict[str, float] = {column: 0.0 for column, _ in ARTEFACT_RANGE.values()}
    # Every draw is made for every artefact, present or not, so one artefact's presence never
    # shifts another's random stream.
    present = {a: bool(rng.uniform() < probability[a]) for a in ARTEFACTS}
    level = {a: float(rng.uniform(0.05, 1.0)) * ARTEFACT_RANGE[a][1] for a in ARTEFACTS}
    motion_seed, ghost_n, ghost_axis, noise_seed = (int(v) for v in rng.integers(2**31, size=4))
    bias_coefficients = rng.uniform(-1, 1, 10)
    spike_positions = rng.uniform(-0.4, 0.4, (int(rng.integers(1, 3)), 3))
    if present["motion"]:
        p = sample_motion(level["motion"], motion_seed, affine=image.affine, shape=data.shape)
        data = simulate_motion(data, p["degrees"], p["translation"], p["times"], image.affine)
        sev["motion_mm"] = float(p["score"])
    img = tio.ScalarImage(tensor=data[None], affine=image.affine)
    if present["blur"]:
        sev["blur_mm"] = level["blur"]
        img = tio.Blur(std=(sev["blur_mm"],) * 3)(img)
    if present["bias"]:
        sev["bias"] = level["bias"]
        img = tio.BiasField(coefficients=(bias_coefficients * sev["bias"]).tolist(), order=2)(img)
    if present["ghosting"]:
        sev["ghosting"] = level["ghosting"]
        img = tio.Ghosting(
            num_ghosts=2 + ghost_n % 6, axis=ghost_axis % 3, intensity=sev["ghosting"], restore=0.02
        )(img)
    if present["spike"]:
        sev["spike"] = level["spike"]
        img = tio.Spike(spikes_positions=spike_positions, intensity=sev["spike"])(img)
    if present["noise"]:
        sev["noise_std"] = level["noise"]
        img = tio.Noise(mean=0.0, std=sev["noise_std"], seed=noise_seed)(img)
    return img.data[0].float(), sev


def _gradient_magnitude(v: torch.Tensor) -> torch.Tensor:
    gx, gy, gz = torch.gradient(v.double())
    return (gx**2 + gy**2 + gz**2).sqrt()


def quality_measures(
    volume: torch.Tensor,
    clean: torch.Tensor,
    head: torch.Tensor,
    smooth_vox: float = 4.0,
) -> dict[str, float]:
    """Full-reference image-quality measures of a corrupted volume against its clean source.

    * ``nrmse``: RMS of the *detail* of ``volume - clean`` inside the head (the difference minus
      its Gaussian-smoothed self, σ = ``smooth_vox`` voxels) over the RMS of ``clean`` there: a
      smooth intensity inhomogeneity, which raters discount (and bias correction removes),
      barely counts, while ringing, ghosts, noise and smearing do;
    * ``background_error``: mean ``|volume - clean|`` outside the head over the mean of ``clean``
      inside it (ghosts, spikes and ringing land in the background);
    * ``sharpness_loss``: ``max(0, 1 - G(volume) / G(clean))``, ``G`` the mean gradient magnitude
      inside the head (blur and motion smear edges; noise adds gradient, so it is no loss).

    Args:
        volume: The corrupted volume ``(X, Y, Z)``.
        clean: Its clean source, same shape.
        head: Boolean head mask, same shape (needs voxels inside and outside).
        smooth_vox: Scale (voxels) below which a difference counts as detail in ``nrmse``.

    Returns:
        Measure name → value (all 0 for ``volume == clean``).

    Raises:
        ValueError: If the shapes differ or the mask is empty or full.
    """
    if volume.shape != clean.shape or head.shape != clean.shape:
        raise ValueError(
            f"shapes differ: {tuple(volume.shape)}, {tuple(clean.shape)}, {tuple(head.shape)}"
        )
    head = head.bool()
    if not head.any() or head.all():
        raise ValueError("the head mask must have voxels inside and outside the head")
    from motionqc.synthetic.augment import gaussian_blur

    v, c = volume.double(), clean.double()
    diff = v - c
    detail = diff - gaussian_blur(diff.float(), smooth_vox).double()
    nrmse = detail[head].pow(2).mean().sqrt() / c[head].pow(2).mean().sqrt()
    background = diff[~head].abs().mean() / c[head].mean()
    sharp = _gradient_magnitude(v)[head].mean() / _gradient_magnitude(c)[head].mean()
    return {
        "nrmse": float(nrmse),
        "background_error": float(background),
        "sharpness_loss": float(max(0.0, 1.0 - float(sharp))),
    }


def perceive(measures: pd.DataFrame, rater: Mapping[str, float], z: np.ndarray) -> np.ndarray:
    """A rater's perceived degradation: its weighted sum of the measures × log-normal noise.

    Args:
        measures: One row per volume with the :data:`MEASURES` columns.
        rater: Weight per measure and ``noise`` (standard deviation of the log-normal noise).
        z: One standard-normal draw per volume (the rater's mood on that volume).

    Returns:
        Perceived degradation per volume (≥ 0).
    """
    weighted = sum(rater[m] * measures[m].to_numpy(dtype=float) for m in MEASURES)
    return np.asarray(weighted, dtype=float) * np.exp(rater["noise"] * np.asarray(z, dtype=float))


def grade_cutoffs(
    perceived: np.ndarray, shares: Sequence[float] = POSTER_SHARES
) -> tuple[float, float, float]:
    """The perceived-degradation cut-offs of QC 4 | 3 | 2 | 1 that give ``shares`` on ``perceived``.

    Compute them on the training split only and grade every split with them (:func:`grade`).

    Args:
        perceived: Perceived degradation of the training volumes.
        shares: Relative sizes of QC 1/2, 3 and 4 (QC 1 is the worse half of QC 1/2).

    Returns:
        ``(cut_4, cut_3, cut_2)``: at most ``cut_4`` is QC 4, at most ``cut_3`` QC 3, ...

    Raises:
        ValueError: If ``perceived`` is empty.
    """
    perceived = np.asarray(perceived, dtype=float)
    if perceived.size == 0:
        raise ValueError("no training volume to fix the grade cut-offs on")
    s = np.asarray(shares, dtype=float) / float(np.sum(shares))
    cuts = np.quantile(perceived, [s[2], s[2] + s[1], s[2] + s[1] + s[0] / 2])
    return float(cuts[0]), float(cuts[1]), float(cuts[2])


def grade(perceived: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    """QC scores 1–4 (4 = best) from perceived degradation and :func:`grade_cutoffs`."""
    p = np.asarray(perceived, dtype=float)
    cut_4, cut_3, cut_2 = cutoffs
    return np.select([p <= cut_4, p <= cut_3, p <= cut_2], [4, 3, 2], default=1).astype(int)


def make_qc_set(
    heads: Mapping[str, tio.ScalarImage],
    per_head: int | Mapping[str, int],
    splits: Mapping[str, str],
    seed: int = 0,
    *,
    shares: Sequence[float] = POSTER_SHARES,
    raters: Mapping[str, Mapping[str, float]] = RATERS,
    grid: tuple[float, Sequence[int]] | None = None,
    detail_mm: float | None = None,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Build the demo QC set: corrupted pseudo-subjects graded by simulated raters.

    Args:
        heads: Pseudo-subject id → preprocessed image (never used in pretraining); the ``head``
            column names the real head of each (:func:`motionqc.synthetic.heads.head_of`).
        per_head: Corrupted volumes per pseudo-subject (one number, or one per pseudo-subject).
        splits: Pseudo-subject id → ``train`` / ``val`` / ``test`` (all its volumes follow it).
        seed: Base seed (each volume's corruption and raters' noise derive from it, the head's
            index and the volume's index).
        shares: Class shares on the training split (the poster's 7 : 38 : 70).
        raters: Rater name → :func:`perceive` settings; the first rater's grade is ``qc_score``,
            each rater's grade is in ``qc_score_<rater>``.
        grid: ``(spacing_mm, shape)`` of the returned volumes (the encoder's grid): each corrupted
            volume is simulated and measured on the heads' grid, then preprocessed to this one
            (:func:`motionqc.data.volumes.preprocess`); ``None``: the heads' grid.
        detail_mm: With ``grid``, the encoder's detail grid (``meta["detail_mm"]``): the volumes
            get its detail channels (:func:`motionqc.data.detail.encoder_input`).

    Returns:
        ``(images (N, C, X, Y, Z) float32, table)`` (``C`` 4 with detail channels); the table has ``volume_id, source, head,
        split``, one column per artefact severity, the :data:`MEASURES`, ``perceived_<rater>``
        and ``qc_score_<rater>`` per rater, ``qc_score`` and ``qc_class``.

    Raises:
        ValueError: If no pseudo-subject is in the training split.
    """
    rows, images = [], []
    for h_idx, (sid, image) in enumerate(heads.items()):
        clean = image.data[0].float()
        spacing = float(np.mean(image.spacing))
        inside = clean > 0.1 * float(clean.mean())
        n = per_head if isinstance(per_head, int) else per_head[sid]
        for k in range(n):
            vseed, rseed = np.random.SeedSequence([int(seed), h_idx, k]).generate_state(2)
            vol, sev = corrupt(image, int(vseed))
            # each rater's noise on this volume, drawn from the volume's own seed: a grade never
            # depends on which other volumes are in the set
            moods = np.random.default_rng(int(rseed)).standard_normal(len(raters))
            measures = quality_measures(vol, clean, inside, smooth_vox=8.0 / spacing)
            if grid is not None:
                moved = tio.ScalarImage(tensor=vol[None], affine=image.affine)
                vol = encoder_input(moved, grid[0], grid[1], detail_mm)
            images.append(vol if vol.dim() == 4 else vol[None])
            rows.append(
                {
                    "volume_id": f"{sid}_qc{k:02d}",
                    "source": sid,
                    "head": head_of(sid),
                    "split": splits[sid],
                    **sev,
                    **measures,
                    **{f"_z_{name}": float(m) for name, m in zip(raters, moods, strict=True)},
                }
            )
    table = pd.DataFrame(rows)
    train = (table["split"] == "train").to_numpy()
    if not train.any():
        raise ValueError("make_qc_set: no pseudo-subject in the training split")
    for name, rater in raters.items():
        perceived = perceive(table, rater, table.pop(f"_z_{name}").to_numpy())
        table[f"perceived_{name}"] = perceived
        table[f"qc_score_{name}"] = grade(perceived, grade_cutoffs(perceived[train], shares))
    table["qc_score"] = table[f"qc_score_{next(iter(raters))}"]
    table["qc_class"] = [qc_class(s) for s in table["qc_score"]]
    return torch.stack(images), table
