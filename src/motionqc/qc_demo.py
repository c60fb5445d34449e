"""A demo QC set with SIMULATED ratings, for the sample profile (the sample heads have no ratings).

Each volume is a pseudo-subject (:func:`motionqc.pretrain.augment_heads`) never used in
pretraining, corrupted by a mix of artefacts at random severities: k-space motion plus artefacts
the motion encoder was never trained on (Gaussian noise, ghosting, bias field, blur, k-space
spikes; torchio's deterministic transforms with seeded parameters). A per-volume latent
"badness" makes artefacts co-occur, as in real bad scans. A *simulated rater* grades every volume
from its visible degradation (relative RMS difference to the clean volume) times log-normal rater
noise; the grade thresholds are the quantiles that give the poster's class imbalance
(QC 1/2 : 3 : 4 ≈ 7 : 38 : 70). The labels are therefore synthetic — say so wherever they are
shown — and the same notebooks run on real ratings (a manifest with ``qc_score``) under ``paper``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torchio as tio

from motionqc.data import qc_class
from motionqc.motion import sample_motion, simulate_motion

__all__ = ["ARTEFACTS", "POSTER_SHARES", "corrupt", "make_qc_set", "rate"]

POSTER_SHARES: tuple[int, int, int] = (7, 38, 70)
"""The poster's training split per QC class (1/2, 3, 4)."""

ARTEFACTS: tuple[str, ...] = ("motion", "noise", "ghosting", "bias", "blur", "spike")


def corrupt(
    image: tio.ScalarImage, seed: int, badness: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Corrupt a head with a seeded mix of artefacts whose strength scales with ``badness``.

    Args:
        image: Preprocessed head (one channel, intensities ÷ mean).
        seed: Seed of every draw.
        badness: Latent severity in [0, 1].

    Returns:
        ``(volume (X, Y, Z) float32, severities)``: ``motion_mm`` (the motion score), and the
        parameter of each other artefact (0 when absent).
    """
    rng = np.random.default_rng(seed)
    data = image.data[0].float()
    sev: dict[str, float] = dict.fromkeys(
        ("motion_mm", "noise_std", "ghosting", "bias", "blur_mm", "spike"), 0.0
    )
    present = {a: rng.uniform() < 0.25 + 0.7 * badness for a in ARTEFACTS}
    scale = lambda hi: float(hi * badness * rng.uniform(0.3, 1.0))  # noqa: E731
    if present["motion"]:
        target = scale(3.0)
        if target > 0.02:
            p = sample_motion(
                target, int(rng.integers(2**31)), affine=image.affine, shape=data.shape
            )
            data = simulate_motion(data, p["degrees"], p["translation"], p["times"], image.affine)
            sev["motion_mm"] = float(p["score"])
    img = tio.ScalarImage(tensor=data[None], affine=image.affine)
    if present["blur"]:
        sev["blur_mm"] = scale(4.0)
        img = tio.Blur(std=(sev["blur_mm"],) * 3)(img)
    if present["bias"]:
        sev["bias"] = scale(0.6)
        coeffs = (rng.uniform(-1, 1, 10) * sev["bias"]).tolist()
        img = tio.BiasField(coefficients=coeffs, order=2)(img)
    if present["ghosting"]:
        sev["ghosting"] = scale(0.8)
        img = tio.Ghosting(
            num_ghosts=int(rng.integers(2, 8)),
            axis=int(rng.integers(3)),
            intensity=sev["ghosting"],
            restore=0.02,
        )(img)
    if present["spike"]:
        sev["spike"] = scale(1.5)
        pos = rng.uniform(-0.4, 0.4, (int(rng.integers(1, 3)), 3))
        img = tio.Spike(spikes_positions=pos, intensity=sev["spike"])(img)
    if present["noise"]:
        sev["noise_std"] = scale(0.25)
        img = tio.Noise(mean=0.0, std=sev["noise_std"], seed=int(rng.integers(2**31)))(img)
    return img.data[0].float(), sev


def rate(
    degradation: np.ndarray,
    seed: int,
    shares: Sequence[float] = POSTER_SHARES,
    rater_noise: float = 0.25,
) -> np.ndarray:
    """Simulated rater: QC scores 1–4 from degradation × log-normal noise, at the given shares.

    Args:
        degradation: Visible degradation per volume (≥ 0).
        seed: Seed of the rater's noise.
        shares: Relative sizes of QC 1/2, 3 and 4 (QC 1 is the worse half of QC 1/2).
        rater_noise: Standard deviation of the log-normal noise.

    Returns:
        Integer QC scores (4 = best).
    """
    d = np.asarray(degradation, dtype=float)
    perceived = d * np.exp(np.random.default_rng(seed).normal(0.0, rater_noise, d.shape))
    s = np.asarray(shares, dtype=float) / float(np.sum(shares))
    # Best scores for the least perceived degradation.
    cut_4, cut_3, cut_2 = np.quantile(perceived, [s[2], s[2] + s[1], s[2] + s[1] + s[0] / 2])
    return np.select(
        [perceived <= cut_4, perceived <= cut_3, perceived <= cut_2], [4, 3, 2], default=1
    ).astype(int)


def make_qc_set(
    heads: Mapping[str, tio.ScalarImage],
    per_head: int,
    splits: Mapping[str, str],
    seed: int = 0,
    *,
    shares: Sequence[float] = POSTER_SHARES,
    rater_noise: float = 0.25,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Build the demo QC set: corrupted pseudo-subjects with simulated ratings.

    Args:
        heads: Pseudo-subject id → preprocessed image (never used in pretraining).
        per_head: Corrupted volumes drawn per pseudo-subject.
        splits: Pseudo-subject id → ``train`` / ``val`` / ``test`` (all its volumes follow it).
        seed: Base seed (corruptions and rater).
        shares: Class shares for the rater (the poster's 7 : 38 : 70).
        rater_noise: Log-normal rater noise.

    Returns:
        ``(images (N, 1, X, Y, Z) float32, table)``; the table has ``volume_id, source, split,
        badness, degradation, qc_score, qc_class`` and one column per artefact severity.
    """
    rows, images = [], []
    for h_idx, (sid, image) in enumerate(heads.items()):
        clean = image.data[0].float()
        inside = clean > 0.1 * float(clean.mean())
        for k in range(per_head):
            vseed = int(np.random.SeedSequence([int(seed), h_idx, k]).generate_state(1)[0])
            badness = float(np.random.default_rng(vseed + 1).beta(1.2, 2.5))
            vol, sev = corrupt(image, vseed, badness)
            diff = (vol - clean)[inside]
            degradation = float(diff.pow(2).mean().sqrt() / clean[inside].pow(2).mean().sqrt())
            images.append(vol[None])
            rows.append(
                {
                    "volume_id": f"{sid}_qc{k:02d}",
                    "source": sid,
                    "split": splits[sid],
                    "badness": badness,
                    "degradation": degradation,
                    **sev,
                }
            )
    table = pd.DataFrame(rows)
    table["qc_score"] = rate(table["degradation"].to_numpy(), seed + 7, shares, rater_noise)
    table["qc_class"] = [qc_class(s) for s in table["qc_score"]]
    return torch.stack(images), table
