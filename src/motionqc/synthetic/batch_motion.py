"""Training samples with motion simulated anew for every step, on the training device.

The rendered pool (:mod:`motionqc.synthetic.pool`) caps what the encoder sees at ``pool_size``
samples and must fit in memory: at the poster's scale (1 mm, 300 samples per volume, 138,600
volumes) it does not. :class:`MotionBatches` keeps only the clean sources and, for every step,
draws new samples exactly as a pool sample is drawn (:func:`motionqc.synthetic.pool.draw_sample`:
source, target score, parameters), simulates their k-space motion at the simulation grid on the
training device (:class:`motionqc.physics.device.DeviceMotion`: the Numba resampler on a CPU, pure
torch on a GPU), then applies the inference preprocessing there (:func:`downsample`, which equals
TorchIO's ``Resample`` on these grids, and the mean scaling of
:func:`motionqc.data.volumes.preprocess`). The recipe's per-step geometry and intensity draws
follow as for pool samples (:func:`motionqc.training.recipe.train`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torchio as tio

from motionqc.physics.device import N_BIAS, DeviceMotion
from motionqc.synthetic.pool import draw_sample, randomise_source, sample_row, source_splits

if TYPE_CHECKING:
    from motionqc.training.recipe import RecipeConfig

__all__ = ["BATCH_STREAM", "MOTION_MODES", "MotionBatches", "downsample", "grid_factor"]

MOTION_MODES = ("pool", "batch")
"""Where the recipe's training samples come from: a pool rendered once, or new ones every step."""

BATCH_STREAM = 11
"""Seed-sequence stream of the per-step samples (the pool uses 0 and 1 for its splits, the
recipe's batch draws 7); :meth:`MotionBatches.fixed` uses the next one."""


def grid_factor(config: RecipeConfig) -> int:
    """The integer ratio of the encoder's voxel size to the simulation's.

    Raises:
        ValueError: Unless the encoder grid is the simulation grid coarsened by an integer
            factor, centred (``sim_shape == factor * shape``): then :func:`downsample` is exactly
            the inference preprocessing.
    """
    ratio = config.spacing_mm / config.sim_spacing_mm
    factor = int(round(ratio))
    expected = tuple(factor * int(s) for s in config.shape)
    if factor < 1 or abs(ratio - factor) > 1e-9 or tuple(config.sim_shape) != expected:
        raise ValueError(
            f"motion per batch needs the simulation grid to be the encoder grid refined by an "
            f"integer factor: {config.sim_spacing_mm} mm on {tuple(config.sim_shape)} does not "
            f"refine {config.spacing_mm} mm on {tuple(config.shape)}"
        )
    return factor


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Coarsen volumes by an integer factor as TorchIO's ``Resample`` does (linear, same field).

    TorchIO keeps the field of view: a coarse voxel's centre lies at fine voxel coordinate
    ``factor·i + (factor − 1)/2``, so linear interpolation there is the mean of the fine voxels
    ``(factor − 1)//2`` and ``factor//2`` of each block, along each axis.

    Args:
        x: ``(..., X, Y, Z)`` volumes, each dimension a multiple of ``factor``.
        factor: The coarsening factor (1: unchanged).

    Returns:
        ``(..., X/factor, Y/factor, Z/factor)`` volumes on the same device.
    """
    if factor == 1:
        return x
    lead, (nx, ny, nz) = x.shape[:-3], x.shape[-3:]
    if nx % factor or ny % factor or nz % factor:
        raise ValueError(f"shape {(nx, ny, nz)} is not a multiple of {factor}")
    lo, hi = (factor - 1) // 2, factor // 2 + 1
    b = x.reshape(*lead, nx // factor, factor, ny // factor, factor, nz // factor, factor)
    d = len(lead)
    return b[..., lo:hi, :, lo:hi, :, lo:hi].mean(dim=(d + 1, d + 3, d + 5))


class MotionBatches:
    """New motion-corrupted samples for every training step, simulated on the training device.

    Args:
        sources: Pseudo-subject → image at the simulation grid
            (:func:`motionqc.synthetic.pool.load_sources`).
        config: The recipe.
        split: Which pseudo-subjects the samples come from (``train``).
        device: Where the motion is simulated (the training device).
        backend: Motion backend (:func:`motionqc.physics.motion.simulate_motion`; ``"auto"``:
            the Numba resampler on a CPU, pure torch on a GPU).

    Raises:
        ValueError: If the split holds no pseudo-subject, the grids do not nest
            (:func:`grid_factor`), the recipe has detail channels or draws acquisition
            noise (``source_augment["p_noise"]``, the pool's only).
    """

    def __init__(
        self,
        sources: Mapping[str, tio.ScalarImage],
        config: RecipeConfig,
        *,
        split: str = "train",
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> None:
        if config.detail:
            raise ValueError("motion='batch' has no detail channels: use motion='pool'")
        if float(config.source_augment.get("p_noise", 0.0)) > 0:
            raise ValueError("motion='batch' draws no acquisition noise: use motion='pool'")
        splits = source_splits(sources, config)
        self.sources = {s: v for s, v in sources.items() if splits[s] == split}
        if not self.sources:
            raise ValueError(f"no pseudo-subject in split {split!r}")
        self.config, self.split = config, split
        self.factor = grid_factor(config)
        self.device = torch.device(device)
        self.motion = DeviceMotion(backend=backend)

    def draw(self, step: int) -> list[tuple[np.random.Generator, str, dict[str, object]]]:
        """The draws of a step's ``batch_size`` samples (seeded by the recipe seed and the step)."""
        return self._draws(BATCH_STREAM, int(step), range(self.config.batch_size))

    def _draws(
        self, stream: int, key: int, indices: Sequence[int]
    ) -> list[tuple[np.random.Generator, str, dict[str, object]]]:
        """Samples ``indices`` of one seed stream: seeds ``[seed, stream, key, index]``."""
        seed = int(self.config.seed)
        return [
            draw_sample(np.random.SeedSequence([seed, stream, key, i]), self.sources, self.config)
            for i in indices
        ]

    def render(
        self, draws: Sequence[tuple[np.random.Generator, str, dict[str, object]]]
    ) -> torch.Tensor:
        """Simulate drawn samples on the device, then preprocess them as inference does.

        Returns:
            ``(B, 1, X, Y, Z)`` float32 images at the encoder grid, on the CPU.
        """
        cfg = self.config
        images, counts = [], []
        for rng, source, p in draws:
            image = self.sources[source]
            data = image.data[0].float()
            images.append(randomise_source(data, rng, cfg.source_augment, cfg.sim_spacing_mm))
            counts.append(int(p["n"]) if p["target"] > 0 else 0)
        width = max([*counts, 1])
        b = len(draws)
        params = {k: np.zeros((b, width, 3)) for k in ("degrees", "translation")}
        times = np.zeros((b, width), np.float32)
        for i, (_, _, p) in enumerate(draws):
            k = counts[i]
            params["degrees"][i, :k] = p["degrees"][:k]
            params["translation"][i, :k] = p["translation"][:k]
            times[i, :k] = p["times"][:k]
        batch = {
            "image": torch.stack(images)[:, None].to(self.device),
            "n": torch.tensor(counts),
            "degrees": torch.from_numpy(params["degrees"]),
            "translation": torch.from_numpy(params["translation"]),
            "times": torch.from_numpy(times),
            "affine": torch.from_numpy(np.stack([self.sources[s].affine for _, s, _ in draws])),
            "gamma": torch.ones(b),
            "bias": torch.zeros(b, N_BIAS),
            "rescale_max": torch.zeros(b),
        }
        with torch.random.fork_rng(devices=[]):  # leave the training's global generator alone
            moved = downsample(self.motion(batch)[:, 0], self.factor)
        mean = moved.mean(dim=(1, 2, 3), keepdim=True)
        if not bool((mean > 0).all()):
            raise ValueError("a motion-corrupted sample has no positive mean intensity")
        return (moved / mean)[:, None].float().cpu()

    def batch(self, step: int, part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """A step's new samples (``part`` of them: a DDP rank's share) and labels (mm), on the CPU."""
        draws = self.draw(step)[part]
        labels = torch.tensor([float(p["score"]) for _, _, p in draws], dtype=torch.float32)
        return self.render(draws), labels

    def fixed(self, n: int, stream: int = 0) -> tuple[torch.Tensor, pd.DataFrame]:
        """``n`` samples drawn once (e.g. to score the fit on training data), as ``render_pool``.

        Args:
            n: Number of samples.
            stream: Which fixed set (a different stream, different samples).

        Returns:
            ``(images (n, 1, X, Y, Z) float32, table)`` with one row per sample.
        """
        images, rows = [], []
        for start in range(0, n, self.config.batch_size):
            idx = range(start, min(n, start + self.config.batch_size))
            draws = self._draws(BATCH_STREAM + 1, int(stream), idx)
            images.append(self.render(draws))
            rows += [
                sample_row(i, self.split, s, p) for i, (_, s, p) in zip(idx, draws, strict=True)
            ]
        return torch.cat(images), pd.DataFrame(rows)
