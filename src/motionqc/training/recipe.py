"""The pretraining recipe of the released motion encoder (``make pretrain``).

Motion at the acquisition grid, new intensities every step, a one-cycle schedule that anneals
within its budget.

A user's scan moved while it was acquired, at its own (about 1 mm) resolution; ``motionqc score``
then resamples it to the encoder's grid. The recipe builds its training samples the same way:

1. *Sources*: the training heads at 1 mm on a 160×192×160 grid, multiplied into pseudo-subjects by
   seeded affine + elastic deformations (:func:`motionqc.synthetic.heads.augment_heads`); the last
   pseudo-subject of each head is kept for validation, and the test heads are never touched.
2. *Motion pool*: per sample a target score ~ U(0, ``max_score``) (a share ``p_motion_free`` of
   exact zeros), parameters whose score under :data:`motionqc.physics.score.SCORE_CONVENTION` equals the
   target (:func:`motionqc.synthetic.motion_sets.sample_motion`), k-space motion simulated **at 1 mm**
   (:func:`motionqc.physics.motion.simulate_motion`, TorchIO's ``Motion``), then the inference
   preprocessing (:func:`motionqc.data.volumes.preprocess`) to the encoder grid. Rendered once, in worker
   processes, into chunk files keyed by everything that determines them (resumable).
3. *Per step*: each pool sample is zoomed (×0.83–1.2, its label with it), rotated (±10°) and
   shifted (±10 mm) in its field of view (:func:`geometry_batch`: two training heads alone teach
   one head size, and a larger head that fills the field of view was read as motion), then gets
   a left-right flip and a fresh intensity draw — gamma, a
   random monotone contrast curve (the "contrast shift" that let the follow-up work's synthetic-only
   model transfer to real scans), a polynomial bias field, Rician noise — and the percentile
   scaling of inference (:func:`motionqc.models.encoder.scale_input`), so the network cannot key on one
   head's intensity profile.

:func:`train` runs the steps (AdamW, one-cycle learning rate, resumable checkpoints loaded with
``weights_only=True``); :mod:`motionqc.training.release` wraps it into ``make pretrain``.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio

from motionqc.data.volumes import preprocess
from motionqc.models.encoder import scale_input
from motionqc.models.soft_labels import BIN_RANGE, SoftLabelKL, decode
from motionqc.physics.motion import simulate_motion
from motionqc.physics.score import SCORE_CONVENTION
from motionqc.synthetic.heads import augment_heads, bias_field, head_of
from motionqc.synthetic.motion_sets import sample_scored_motion

__all__ = [
    "RecipeConfig",
    "RECIPES",
    "load_sources",
    "source_splits",
    "render_pool",
    "augment_batch",
    "gaussian_blur",
    "randomise_source",
    "geometry_batch",
    "resample_affine",
    "train",
    "lr_at",
    "predict_logits",
    "val_inputs",
]


@dataclass(frozen=True)
class RecipeConfig:
    """Every knob of the recipe (recorded with the weights it produces).

    Attributes:
        name: Recipe name (``release``, ``sample``, ``smoke``).
        train_heads: Real heads whose pseudo-subjects train (and validate) the encoder.
        val_heads: Real heads that validate (a manifest's validation split, by subject); empty:
            the last pseudo-subject of each training head validates.
        pseudo_subjects: Pseudo-subjects per head (the first is the head itself; without
            ``val_heads`` the last is held out for validation).
        sim_spacing_mm: Voxel size motion is simulated at (the acquisition grid).
        sim_shape: Grid of the sources at that voxel size.
        spacing_mm: The encoder's voxel size.
        shape: The encoder's grid.
        channels: SFCN widths.
        dropout: SFCN dropout.
        pool_size: Motion-corrupted training samples rendered.
        val_size: Validation samples rendered (from the held-out pseudo-subjects).
        max_score: Largest target score (mm).
        p_motion_free: Share of samples without motion (label 0).
        steps: Optimiser steps.
        batch_size: Samples per step.
        lr: Peak learning rate of the one-cycle schedule.
        pct_start: Share of the steps spent warming up.
        weight_decay: AdamW weight decay.
        eval_every: Steps between validation passes (and checkpoints).
        seed: Base seed of every draw.
        augment: Probabilities and ranges of the per-step intensity draws (:func:`augment_batch`).
        source_augment: Probabilities and ranges of the draws applied to each pool sample's
            source at the simulation grid, before its motion (:func:`randomise_source`).
    """

    name: str = "release"
    train_heads: tuple[str, ...] = ("robex_atlas", "mni152_2009")
    val_heads: tuple[str, ...] = ()
    pseudo_subjects: int = 8
    sim_spacing_mm: float = 1.0
    sim_shape: tuple[int, int, int] = (160, 192, 160)
    spacing_mm: float = 4.0
    shape: tuple[int, int, int] = (40, 48, 40)
    channels: tuple[int, ...] = (32, 64, 128, 256, 256, 64)
    dropout: float = 0.3
    pool_size: int = 3000
    val_size: int = 96
    max_score: float = 4.0
    p_motion_free: float = 0.08
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-3
    pct_start: float = 0.15
    weight_decay: float = 0.05
    eval_every: int = 250
    seed: int = 0
    augment: dict = field(
        default_factory=lambda: {
            "p_flip": 0.5,
            "log_gamma": 0.15,
            "p_contrast": 0.5,
            "contrast_knots": 4,
            "contrast_strength": 0.5,
            "p_bias": 0.5,
            "bias_coefficient": 0.3,
            "p_noise": 0.15,
            "noise_std": 0.01,
            "p_blur": 0.0,
            "blur_mm": 1.2,
            "p_sharpen": 0.0,
            "sharpen": 1.0,
            "p_geometry": 0.8,
            "zoom": 0.2,
            "rotate_deg": 10.0,
            "shift_mm": 10.0,
        }
    )
    source_augment: dict = field(
        default_factory=lambda: {
            "p_remap": 0.0,
            "remap_knots": 6,
            "p_monotone": 0.5,
            "p_blur": 0.0,
            "blur_mm": 1.2,
        }
    )

    def replace(self, **changes: object) -> RecipeConfig:
        """Return a copy with some knobs changed."""
        data = asdict(self) | changes
        return RecipeConfig(**data)

    def as_dict(self) -> dict[str, object]:
        """Return the knobs as plain JSON types."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out


RECIPES: dict[str, RecipeConfig] = {
    "release": RecipeConfig(),
    "sample": RecipeConfig(name="sample", pool_size=1200, val_size=64, steps=2000),
    "smoke": RecipeConfig(
        name="smoke",
        pseudo_subjects=2,
        sim_spacing_mm=4.0,
        sim_shape=(40, 48, 40),
        channels=(16, 32, 64, 128, 128, 64),
        pool_size=12,
        val_size=4,
        steps=4,
        batch_size=4,
        eval_every=2,
    ),
}


# ------------------------------------------------------------------------------------ sources
def load_sources(
    paths: Mapping[str, str | Path], config: RecipeConfig
) -> dict[str, tio.ScalarImage]:
    """The training (and validation) heads at the simulation grid, multiplied into pseudo-subjects.

    Args:
        paths: Real head id → NIfTI file (only ``config.train_heads`` and ``config.val_heads``
            are read).
        config: The recipe.

    Returns:
        ``"<head>~<k>"`` → canonical image at ``sim_spacing_mm`` on ``sim_shape``, intensities
        divided by their mean.

    Raises:
        ValueError: If a training head has no file.
    """
    heads = list(dict.fromkeys([*config.train_heads, *config.val_heads]))
    both = sorted(set(config.train_heads) & set(config.val_heads))
    if both:
        raise ValueError(f"head(s) both training and validating: {', '.join(both)}")
    missing = [h for h in heads if h not in paths]
    if missing:
        raise ValueError(f"no file for training head(s): {', '.join(missing)}")
    real = {h: preprocess(paths[h], config.sim_spacing_mm, config.sim_shape) for h in heads}
    return augment_heads(real, config.pseudo_subjects, seed=config.seed)


def source_splits(sources: Sequence[str], config: RecipeConfig) -> dict[str, str]:
    """``train`` or ``val`` per pseudo-subject.

    With ``config.val_heads`` every pseudo-subject of a validation head validates; without, the
    last pseudo-subject of each training head does.
    """
    out = {}
    if config.val_heads:
        val = set(config.val_heads)
        return {s: "val" if head_of(s) in val else "train" for s in sources}
    for s in sources:
        k = int(s.split("~", 1)[1])
        last = k == config.pseudo_subjects - 1 and config.pseudo_subjects > 1
        out[s] = "val" if last else "train"
    return out


# --------------------------------------------------------------------------------- the pool
def _sample(
    index: int, split: str, sources: Mapping[str, tio.ScalarImage], config: RecipeConfig
) -> tuple[np.ndarray, dict[str, object]]:
    """Render one pool sample: motion at the simulation grid, then the inference preprocessing."""
    names = sorted(sources)
    split_id = {"train": 0, "val": 1}[split]
    seq = np.random.SeedSequence([int(config.seed), split_id, int(index)])
    rng = np.random.default_rng(seq)
    source = names[int(rng.integers(len(names)))]
    image = sources[source]
    if rng.uniform() < config.p_motion_free:
        target = 0.0
    else:
        target = float(rng.uniform(0.0, config.max_score))
    motion_seed = int(seq.generate_state(1)[0])
    p = sample_scored_motion(target, motion_seed, affine=image.affine, shape=image.shape[1:])
    data = randomise_source(
        image.data[0].float(), rng, config.source_augment, config.sim_spacing_mm
    )
    if target > 0:
        data = simulate_motion(
            data, p["degrees"], p["translation"], p["times"], image.affine, backend="auto"
        )
    moved = tio.ScalarImage(tensor=data[None], affine=image.affine)
    out = preprocess(moved, config.spacing_mm, config.shape).data[0].numpy()
    row = {
        "index": int(index),
        "split": split,
        "source": source,
        "head": head_of(source),
        "label": float(p["score"]),
        "n": int(p["n"]),
        "degrees": json.dumps(np.round(p["degrees"], 8).tolist()),
        "translation": json.dumps(np.round(p["translation"], 8).tolist()),
        "times": json.dumps([float(t) for t in p["times"]]),
    }
    return out.astype(np.float16), row


_WORKER: dict[str, object] = {}


def _init_worker(sources: Mapping[str, tio.ScalarImage], config: RecipeConfig) -> None:
    torch.set_num_threads(1)
    _WORKER["sources"], _WORKER["config"] = sources, config


def _render(args: tuple[int, str]) -> tuple[np.ndarray, dict[str, object]]:
    return _sample(args[0], args[1], _WORKER["sources"], _WORKER["config"])  # type: ignore[arg-type]


def pool_key(sources: Mapping[str, tio.ScalarImage], config: RecipeConfig) -> str:
    """Digest of everything that determines the pool: the sources' voxels and the pool knobs."""
    h = hashlib.sha256()
    knobs = {
        k: config.as_dict()[k]
        for k in (
            "train_heads",
            "pseudo_subjects",
            "sim_spacing_mm",
            "sim_shape",
            "spacing_mm",
            "shape",
            "max_score",
            "p_motion_free",
            "seed",
            "source_augment",
        )
    }
    knobs["convention"] = SCORE_CONVENTION.as_dict()
    h.update(json.dumps(knobs, sort_keys=True).encode())
    for name in sorted(sources):
        h.update(name.encode())
        h.update(sources[name].data.numpy().tobytes())
    return h.hexdigest()[:16]


def render_pool(
    sources: Mapping[str, tio.ScalarImage],
    config: RecipeConfig,
    split: str,
    n: int,
    *,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    chunk: int = 50,
    progress: bool = True,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Render ``n`` samples of a split (resumable: finished chunks are read back).

    Args:
        sources: Pseudo-subject → image (:func:`load_sources`).
        config: The recipe.
        split: ``train`` or ``val``: which pseudo-subjects the samples come from.
        n: Number of samples.
        cache_dir: Folder of the chunk files (``None``: nothing cached).
        num_workers: Rendering processes (0: this process).
        chunk: Samples per chunk file.
        progress: Show a progress bar.

    Returns:
        ``(images (n, 1, X, Y, Z) float16, table)`` with one row per sample (label, parameters).
    """
    from tqdm.auto import tqdm

    splits = source_splits(sources, config)
    members = {s: v for s, v in sources.items() if splits[s] == split}
    if not members:
        raise ValueError(f"no pseudo-subject in split {split!r}")
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / f"pool_{pool_key(members, config)}_{split}"
        folder.mkdir(parents=True, exist_ok=True)
    images, rows = [], []
    starts = range(0, n, chunk)
    ctx = mp.get_context("fork")
    pool = ctx.Pool(num_workers, _init_worker, (members, config)) if num_workers > 0 else None
    try:
        for start in tqdm(starts, desc=f"motion pool {split}", disable=not progress):
            stop = min(n, start + chunk)
            file = folder / f"chunk_{start:06d}_{stop:06d}.pt" if folder else None
            if file is not None and file.is_file():
                saved = torch.load(file, map_location="cpu", weights_only=True)
                images.append(saved["images"])
                rows.extend(json.loads(saved["rows"]))
                continue
            jobs = [(i, split) for i in range(start, stop)]
            if pool is None:
                done = [_sample(i, s, members, config) for i, s in jobs]
            else:
                done = pool.map(_render, jobs)
            block = torch.from_numpy(np.stack([d[0] for d in done]))[:, None]
            block_rows = [d[1] for d in done]
            if file is not None:
                tmp = file.with_name(file.name + ".tmp")
                torch.save({"images": block, "rows": json.dumps(block_rows)}, tmp)
                os.replace(tmp, file)
            images.append(block)
            rows.extend(block_rows)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return torch.cat(images), pd.DataFrame(rows)


def randomise_source(
    data: torch.Tensor, rng: np.random.Generator, knobs: Mapping[str, float], spacing_mm: float
) -> torch.Tensor:
    """New contrast and sharpness for a source volume, drawn before its motion is simulated.

    Two training heads teach two contrasts and two sharpnesses, and an encoder trained on them
    read an unseen head's own sharpness and contrast as motion. Drawn at the simulation grid,
    before the k-space motion (so the artefact is that of the new image, as in a scan of that
    contrast and resolution), in the spirit of SynthSeg's domain randomisation (Billot et al.
    2023):

    - with probability ``p_remap``: intensities over the 99.5th percentile are mapped through a
      piecewise-linear curve through 0 and ``remap_knots`` + 1 evenly spaced knots whose values
      ~ U(0.05, 1) (sorted, i.e. a T1-like order of tissues, with probability ``p_monotone``;
      else any order of tissues), then scaled back; the background stays dark;
    - with probability ``p_blur``: a Gaussian blur, σ ~ U(0, ``blur_mm``) mm.

    The number of draws from ``rng`` is fixed whatever their outcome; with both probabilities
    at 0 nothing is drawn and ``data`` is returned unchanged.

    Args:
        data: One volume ``(X, Y, Z)`` at the simulation grid.
        rng: The pool sample's generator.
        knobs: :attr:`RecipeConfig.source_augment`.
        spacing_mm: The voxel size of ``data``.

    Returns:
        The randomised volume (float32).
    """
    p_remap, p_blur = float(knobs.get("p_remap", 0.0)), float(knobs.get("p_blur", 0.0))
    if p_remap <= 0 and p_blur <= 0:
        return data
    k = int(knobs["remap_knots"])
    u = rng.uniform(size=4)
    ys = rng.uniform(0.05, 1.0, size=k + 1)
    if u[0] < p_remap:
        top = float(torch.quantile(data.flatten()[::7], 0.995).clamp_min(1e-6))
        if u[1] < float(knobs["p_monotone"]):
            ys = np.sort(ys)
        xs = np.linspace(0.0, 1.0, k + 2)
        v = data.numpy().astype(np.float64) / top
        data = torch.from_numpy((np.interp(v, xs, np.r_[0.0, ys]) * top).astype(np.float32))
    if u[2] < p_blur:
        data = gaussian_blur(data, float(u[3]) * float(knobs["blur_mm"]) / spacing_mm)
    return data


# --------------------------------------------------------------------------- augmentation
def _monotone_curve(v: torch.Tensor, knots: int, gen: torch.Generator) -> torch.Tensor:
    """A random increasing piecewise-linear map of [0, 1] onto itself (identity outside)."""
    xs = torch.sort(torch.rand(knots, generator=gen, dtype=torch.float64)).values
    ys = torch.sort(torch.rand(knots, generator=gen, dtype=torch.float64)).values
    xs = torch.cat([torch.zeros(1, dtype=xs.dtype), xs, torch.ones(1, dtype=xs.dtype)]).float()
    ys = torch.cat([torch.zeros(1, dtype=ys.dtype), ys, torch.ones(1, dtype=ys.dtype)]).float()
    inside = v.clamp(0.0, 1.0)
    seg = torch.bucketize(inside.contiguous(), xs[1:-1])
    x0, x1, y0, y1 = xs[seg], xs[seg + 1], ys[seg], ys[seg + 1]
    mapped = y0 + (inside - x0) / (x1 - x0).clamp_min(1e-6) * (y1 - y0)
    return torch.where((v >= 0) & (v <= 1), mapped, v)


def _smooth_field(shape: Sequence[int], coefficients: torch.Tensor) -> torch.Tensor:
    """TorchIO's polynomial bias field on a grid 4× coarser, trilinearly upsampled (it is smooth)."""
    coarse = [max(2, int(s) // 4) for s in shape]
    field = bias_field(coarse, coefficients)[None, None]
    return torch.nn.functional.interpolate(field, size=tuple(shape), mode="trilinear")[0, 0]


def gaussian_blur(v: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Isotropic Gaussian blur of one volume (separable, ``sigma_vox`` voxels, edges replicated)."""
    if sigma_vox <= 0:
        return v
    radius = max(1, int(3 * sigma_vox + 0.5))  # scipy.ndimage.gaussian_filter(truncate=3)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    k = k / k.sum()
    out = v[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = torch.nn.functional.conv3d(
            torch.nn.functional.pad(out, pad, mode="replicate"), k.view(shape)
        )
    return out[0, 0]


def resample_affine(
    v: torch.Tensor,
    zoom: float,
    angles_deg: Sequence[float],
    shift_mm: Sequence[float],
    spacing_mm: float,
) -> torch.Tensor:
    """Zoom, rotate and shift volumes about the centre of their grid (trilinear, zeros outside).

    The output at the point ``q`` (mm from the grid centre) is the input at
    ``Rᵀ (q − shift) / zoom``, with ``R`` the rotations about X, then Y, then Z: the head appears
    ``zoom`` times larger, rotated by ``R`` and moved by ``shift``.

    Args:
        v: ``(B, C, X, Y, Z)`` volumes on an isotropic grid.
        zoom: Magnification (> 0).
        angles_deg: Rotation about X, Y, Z (degrees).
        shift_mm: Shift along X, Y, Z (mm).
        spacing_mm: The voxel size.

    Returns:
        The resampled volumes (float32).
    """
    rot = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles_deg):
        a = math.radians(float(angle))
        i, j = (axis + 1) % 3, (axis + 2) % 3  # right-handed: X→(Y, Z), Y→(Z, X), Z→(X, Y)
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        rot = r @ rot
    half = torch.tensor(v.shape[2:], dtype=torch.float64) * spacing_mm / 2
    lin = rot.T / float(zoom)
    m = torch.diag(1 / half) @ lin @ torch.diag(half)  # in affine_grid's [-1, 1] coordinates
    t = -(lin @ torch.tensor([float(s) for s in shift_mm], dtype=torch.float64)) / half
    order = [2, 1, 0]  # affine_grid orders its coordinates (W, H, D) = (Z, Y, X)
    theta = torch.cat([m[order][:, order], t[order, None]], dim=1).float()
    grid = torch.nn.functional.affine_grid(
        theta.expand(len(v), 3, 4), list(v.shape), align_corners=False
    )
    return torch.nn.functional.grid_sample(
        v.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def geometry_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    augment: Mapping[str, float],
    spacing_mm: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom, rotate and shift each pool sample in its field of view; scale its label with the zoom.

    Per volume, with probability ``p_geometry``: a zoom ``s = exp(u·log(1 + zoom))`` (u ~ U(±1)),
    a rotation about each axis ~ U(±``rotate_deg``) and a shift ~ U(±``shift_mm``) per axis
    (:func:`resample_affine`). The training heads then fill (and overflow) the field of view as
    a large or off-centre head does, which the two training heads' sizes alone do not teach. A
    head zoomed by ``s`` that moved by the sampled poses is, in mm, a head ``s`` times larger whose
    every displacement is ``s`` times larger, so its label — an RMS displacement in mm — is ``s``
    times the sample's.

    Args:
        x: ``(B, 1, X, Y, Z)`` batch on an isotropic grid.
        y: ``(B,)`` labels (mm).
        gen: The generator of every draw.
        augment: ``p_geometry``, ``zoom``, ``rotate_deg``, ``shift_mm``
            (:attr:`RecipeConfig.augment`; absent or ``p_geometry = 0``: unchanged, no draw).
        spacing_mm: The voxel size of ``x``.

    Returns:
        The batch (float32) and its labels.
    """
    p = float(augment.get("p_geometry", 0.0))
    if p <= 0:
        return x, y
    out, labels = [], []
    for v, label in zip(x.float(), y.float(), strict=True):
        u = (torch.rand(8, generator=gen, dtype=torch.float64) * 2 - 1).tolist()
        if (u[7] + 1) / 2 >= p:
            out.append(v)
            labels.append(label)
            continue
        zoom = math.exp(u[0] * math.log1p(float(augment["zoom"])))
        angles = [a * float(augment["rotate_deg"]) for a in u[1:4]]
        shift = [d * float(augment["shift_mm"]) for d in u[4:7]]
        out.append(resample_affine(v[None], zoom, angles, shift, spacing_mm)[0])
        labels.append(label * zoom)
    return torch.stack(out), torch.stack(labels)


def augment_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    augment: Mapping[str, float],
    method: str = "percentile",
    spacing_mm: float = 1.0,
) -> torch.Tensor:
    """Draw new intensities for a batch of pool samples, then scale it as inference does.

    Per volume: left-right flip; a Gaussian blur (σ ~ U(0, ``blur_mm``) mm) or an unsharp mask
    (``v + a·(v − blur_σ=1 voxel(v))``, a ~ U(0, ``sharpen``)), so that sharpness alone is not
    read as motion (both act on k-space as a multiplication, so they commute with the k-space
    motion model); gamma ``sign(v)·|v|^γ`` (log γ ~ U(±``log_gamma``)) on the volume
    scaled by its 99.5th percentile, a random monotone contrast curve blended with the identity
    (weight ~ U(0, ``contrast_strength``): the faint ghosts in the background stay visible), a
    polynomial bias field
    (TorchIO's ``RandomBiasField``: order 3, coefficients ~ U(±``bias_coefficient``)), Rician noise
    (σ ~ U(0, ``noise_std``) of that percentile), each with its probability; then
    :func:`motionqc.models.encoder.scale_input`.

    Args:
        x: ``(B, 1, X, Y, Z)`` batch.
        gen: The generator of every draw (seeded per step by :func:`train`).
        augment: Probabilities and ranges (:attr:`RecipeConfig.augment`).
        method: The input scaling the encoder records.
        spacing_mm: The voxel size of ``x`` (the blur is drawn in mm).

    Returns:
        The augmented, scaled batch (float32).
    """
    out = []
    shape = tuple(x.shape[2:])
    for v in x[:, 0].float():

        def draw() -> float:
            return float(torch.rand((), generator=gen))

        if draw() < augment["p_flip"]:
            v = v.flip(0)
        p_blur, p_sharpen = augment.get("p_blur", 0.0), augment.get("p_sharpen", 0.0)
        if p_blur > 0 or p_sharpen > 0:  # off: the draws of a recipe without them are unchanged
            if draw() < p_blur:
                v = gaussian_blur(v, draw() * augment["blur_mm"] / spacing_mm)
            elif draw() < p_sharpen:
                v = v + draw() * augment["sharpen"] * (v - gaussian_blur(v, 1.0))
        top = torch.quantile(v.flatten()[::7], 0.995).clamp_min(1e-6)
        v = v / top
        log_gamma = (2 * draw() - 1) * augment["log_gamma"]
        v = v.sign() * v.abs() ** math.exp(log_gamma)
        if draw() < augment["p_contrast"]:  # a random curve, blended with the identity
            alpha = draw() * augment["contrast_strength"]
            v = v + alpha * (_monotone_curve(v, int(augment["contrast_knots"]), gen) - v)
        if draw() < augment["p_bias"]:
            c = augment["bias_coefficient"]
            coef = (2 * torch.rand(20, generator=gen, dtype=torch.float64) - 1) * c
            v = v * _smooth_field(shape, coef)
        if draw() < augment["p_noise"]:
            sigma = draw() * augment["noise_std"]
            n1 = torch.randn(v.shape, generator=gen) * sigma
            n2 = torch.randn(v.shape, generator=gen) * sigma
            v = torch.sqrt((v + n1) ** 2 + n2**2)
        out.append(v)
    return scale_input(torch.stack(out)[:, None], method)


# ------------------------------------------------------------------------------- training
def lr_at(step: int, steps: int, peak: float, pct_start: float) -> float:
    """One-cycle learning rate: cosine warm-up from peak/25 to peak, cosine decay to peak/1e4."""
    warm = max(1, int(round(steps * pct_start)))
    if step < warm:
        t = step / warm
        return peak / 25 + (peak - peak / 25) * (1 - math.cos(math.pi * t)) / 2
    t = min(1.0, (step - warm) / max(1, steps - warm))
    return peak / 1e4 + (peak - peak / 1e4) * (1 + math.cos(math.pi * t)) / 2


def val_inputs(val_x: torch.Tensor, config: RecipeConfig) -> torch.Tensor:
    """The validation samples with their own fixed intensity draws (the same at every pass)."""
    items = []
    for i in range(len(val_x)):
        gen = torch.Generator().manual_seed(int(config.seed) * 1_000_003 + 17 + i)
        items.append(
            augment_batch(val_x[i : i + 1], gen, config.augment, spacing_mm=config.spacing_mm)
        )
    return torch.cat(items)


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Log-probabilities of already scaled inputs, in eval mode, batch by batch, on the CPU.

    The batches go to the device the model is on; the outputs come back to the CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        outs.append(model(xb.contiguous(memory_format=torch.channels_last_3d)).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def train(
    model: torch.nn.Module,
    pool: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    config: RecipeConfig,
    run_dir: str | Path | None = None,
    *,
    log: bool = True,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Train the encoder for ``config.steps`` steps (resumable from ``run_dir/last.pt``).

    Each step draws ``batch_size`` pool samples (seeded by the step) and new intensities for them
    (:func:`augment_batch`); the loss is the soft-label KL divergence; every ``eval_every`` steps
    the validation samples are scored and a checkpoint is written. A checkpoint holds plain types
    only and is read back with ``weights_only=True``; one written with other settings is refused.

    Args:
        model: An SFCN with ``n_outputs`` bins.
        pool: Training images ``(N, 1, X, Y, Z)`` and labels ``(N,)``.
        val: Validation images and labels.
        config: The recipe.
        run_dir: Folder of ``last.pt`` and ``history.csv`` (``None``: no checkpoints).
        log: Print one line per validation pass.
        device: Where the model trains (``cuda``: each batch is drawn and augmented on the CPU,
            with the same seeds, then copied over).

    Returns:
        One row per validation pass: ``step``, ``lr``, ``train_loss``, ``val_loss``, ``val_r2``,
        ``val_mae``, ``seconds``.

    Raises:
        ValueError: If ``run_dir`` holds a checkpoint of another recipe.
    """
    pool_x, pool_y = pool
    val_x, val_y = val
    loss_fn = SoftLabelKL()
    device = torch.device(device)
    model.to(device=device, memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start, elapsed = 0, 0.0
    last = Path(run_dir) / "last.pt" if run_dir is not None else None
    if last is not None and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state.get("config") != json.dumps(config.as_dict(), sort_keys=True):
            raise ValueError(f"{last}: a checkpoint of other recipe settings; remove {run_dir}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["seconds"])
        history = json.loads(state["history"])
    vx = val_inputs(val_x, config) if len(val_x) else val_x
    running: list[float] = []
    t0 = time.perf_counter() - elapsed
    for step in range(start, config.steps):
        seq = np.random.SeedSequence([int(config.seed), 7, step])
        idx = np.random.default_rng(seq).choice(len(pool_x), config.batch_size, replace=False)
        gen = torch.Generator().manual_seed(int(seq.generate_state(1)[0]))
        x, y = geometry_batch(
            pool_x[idx], pool_y[idx], gen, config.augment, spacing_mm=config.spacing_mm
        )
        x = augment_batch(x, gen, config.augment, spacing_mm=config.spacing_mm)
        x = x.to(device).contiguous(memory_format=torch.channels_last_3d)
        y = y.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.pct_start)
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y.float())
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            out = predict_logits(model, vx)
            pred = decode(out, BIN_RANGE).numpy().astype(np.float64)
            truth = val_y.numpy().astype(np.float64)
            ss = float(((truth - truth.mean()) ** 2).sum()) or 1.0
            row = {
                "step": done,
                "lr": lr_at(step, config.steps, config.lr, config.pct_start),
                "train_loss": float(np.mean(running)),
                "val_loss": float(loss_fn(out, val_y.float())),
                "val_r2": 1 - float(((pred - truth) ** 2).sum()) / ss,
                "val_mae": float(np.abs(pred - truth).mean()),
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            running = []
            if log:
                print(" ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
            if last is not None:
                last.parent.mkdir(parents=True, exist_ok=True)
                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": done,
                    "seconds": row["seconds"],
                    "history": json.dumps(history),
                    "config": json.dumps(config.as_dict(), sort_keys=True),
                }
                tmp = last.with_name(last.name + ".tmp")
                torch.save(state, tmp)
                os.replace(tmp, last)
                pd.DataFrame(history).to_csv(last.parent / "history.csv", index=False)
    model.eval()
    return pd.DataFrame(history)
