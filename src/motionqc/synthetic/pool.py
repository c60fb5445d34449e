"""The recipe's motion pool: training heads at the acquisition grid, motion simulated there.

A user's scan moved while it was acquired, at its own (about 1 mm) resolution; ``motionqc score``
then resamples it to the encoder's grid. The pool is built the same way:

1. *Sources* (:func:`load_sources`): the training heads at 1 mm on a 160×192×160 grid, multiplied
   into pseudo-subjects by seeded affine + elastic deformations
   (:func:`motionqc.synthetic.heads.augment_heads`); the last pseudo-subject of each head is kept
   for validation (:func:`source_splits`), and the test heads are never touched.
2. *Samples* (:func:`render_pool`): per sample a target score ~ U(0, ``max_score``) (a share
   ``p_motion_free`` of exact zeros), parameters whose score under
   :data:`motionqc.physics.score.SCORE_CONVENTION` equals the target
   (:func:`motionqc.synthetic.parameters.sample_scored_motion`), optionally a new contrast and
   sharpness of the source (:func:`randomise_source`), k-space motion simulated **at 1 mm**
   (:func:`motionqc.physics.motion.simulate_motion`, TorchIO's ``Motion``), then the inference
   preprocessing (:func:`motionqc.data.detail.encoder_input`) to the encoder grid. Rendered once,
   in worker processes, into chunk files keyed by everything that determines them (resumable).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torchio as tio

from motionqc.data.detail import encoder_input
from motionqc.data.volumes import preprocess
from motionqc.physics.motion import simulate_motion
from motionqc.physics.score import SCORE_CONVENTION
from motionqc.synthetic.augment import affine_of_uniforms, gaussian_blur, resample_affine
from motionqc.synthetic.heads import augment_heads, head_of
from motionqc.synthetic.label_heads import generated_heads
from motionqc.synthetic.parameters import sample_scored_motion
from motionqc.synthetic.texture import synthetic_texture

if TYPE_CHECKING:
    from motionqc.training.recipe import RecipeConfig

__all__ = [
    "acquisition_noise",
    "draw_sample",
    "load_sources",
    "pool_key",
    "randomise_source",
    "render_pool",
    "sample_row",
    "source_augment_on",
    "source_splits",
]


def load_sources(
    paths: Mapping[str, str | Path], config: RecipeConfig
) -> dict[str, tio.ScalarImage]:
    """The training (and validation) heads at the simulation grid, multiplied into pseudo-subjects.

    Args:
        paths: Real head id → NIfTI file (only ``config.train_heads``, ``config.val_heads`` and
            ``config.label_maps`` are read).
        config: The recipe.

    Returns:
        ``"<head>~<k>"`` → canonical image at ``sim_spacing_mm`` on ``sim_shape``, intensities
        divided by their mean; with ``config.label_maps`` also ``"<map>.g<k>~0"``, the heads
        generated from them (:func:`motionqc.synthetic.label_heads.generated_heads`), which
        train.

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
    sources = augment_heads(real, config.pseudo_subjects, seed=config.seed)
    if config.label_maps:
        missing = [m for m in config.label_maps if m not in paths]
        if missing:
            raise ValueError(f"no file for label map(s): {', '.join(missing)}")
        generated = generated_heads(
            {m: paths[m] for m in config.label_maps},
            config.heads_per_map,
            spacing_mm=config.sim_spacing_mm,
            shape=config.sim_shape,
            seed=config.seed,
        )
        sources.update({f"{name}~0": image for name, image in generated.items()})
    return sources


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


def draw_sample(
    seq: np.random.SeedSequence, sources: Mapping[str, tio.ScalarImage], config: RecipeConfig
) -> tuple[np.random.Generator, str, dict[str, object]]:
    """Draw one sample's source and motion (the pool's and the per-batch path's one draw).

    Args:
        seq: The sample's seed sequence.
        sources: Pseudo-subject → image at the simulation grid.
        config: The recipe (``max_score``, ``p_motion_free``).

    Returns:
        ``(generator, source name, parameters)``: the generator continues with the sample's
        source draws (:func:`randomise_source`); the parameters are those of
        :func:`motionqc.synthetic.parameters.sample_scored_motion` plus ``target`` (0: no motion).
    """
    names = sorted(sources)
    rng = np.random.default_rng(seq)
    source = names[int(rng.integers(len(names)))]
    image = sources[source]
    if rng.uniform() < config.p_motion_free:
        target = 0.0
    else:
        target = float(rng.uniform(0.0, config.max_score))
    motion_seed = int(seq.generate_state(1)[0])
    p = sample_scored_motion(target, motion_seed, affine=image.affine, shape=image.shape[1:])
    return rng, source, {**p, "target": target}


def sample_row(index: int, split: str, source: str, p: Mapping[str, object]) -> dict[str, object]:
    """The table row of one sample: its source, label and motion parameters (JSON lists)."""
    return {
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


def _sample(
    index: int, split: str, sources: Mapping[str, tio.ScalarImage], config: RecipeConfig
) -> tuple[np.ndarray, dict[str, object]]:
    """Render one pool sample: motion at the simulation grid, then the inference preprocessing."""
    split_id = {"train": 0, "val": 1}[split]
    seq = np.random.SeedSequence([int(config.seed), split_id, int(index)])
    rng, source, p = draw_sample(seq, sources, config)
    image = sources[source]
    data = randomise_source(
        image.data[0].float(), rng, config.source_augment, config.sim_spacing_mm
    )
    if p["target"] > 0:
        data = simulate_motion(
            data, p["degrees"], p["translation"], p["times"], image.affine, backend="auto"
        )
    data = acquisition_noise(data, rng, config.source_augment)
    moved = tio.ScalarImage(tensor=data[None], affine=image.affine)
    out = encoder_input(moved, config.spacing_mm, config.shape, config.detail_mm).numpy()
    return out.astype(np.float16), sample_row(index, split, source, p)


_WORKER: dict[str, object] = {}


def _init_worker(sources: Mapping[str, tio.ScalarImage], config: RecipeConfig) -> None:
    torch.set_num_threads(1)
    _WORKER["sources"], _WORKER["config"] = sources, config


def _render(args: tuple[int, str]) -> tuple[np.ndarray, dict[str, object]]:
    return _sample(args[0], args[1], _WORKER["sources"], _WORKER["config"])  # type: ignore[arg-type]


def pool_key(sources: Mapping[str, tio.ScalarImage], config: RecipeConfig) -> str:
    """Digest of everything that determines the pool: the sources' voxels and the pool knobs.

    The source knobs enter only when they draw anything (:func:`source_augment_on`): a pool
    rendered without them is the same whatever their other values.
    """
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
        )
    }
    if source_augment_on(config.source_augment):
        knobs["source_augment"] = config.source_augment
    if config.detail:  # as before the knob existed when off
        knobs["detail"] = True
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
        ``(images (n, C, X, Y, Z) float16, table)`` with one row per sample (label,
        parameters); ``C`` is the recipe's ``in_channels``.
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
            if pool is None:  # torch's global generator as if rendered elsewhere (or read back)
                with torch.random.fork_rng(devices=[]):
                    done = [_sample(i, s, members, config) for i, s in jobs]
            else:
                done = pool.map(_render, jobs)
            block = torch.from_numpy(np.stack([d[0] for d in done]))
            block_rows = [d[1] for d in done]
            if file is not None:
                tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")  # DDP ranks render too
                torch.save({"images": block, "rows": json.dumps(block_rows)}, tmp)
                os.replace(tmp, file)
            images.append(block)
            rows.extend(block_rows)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return torch.cat(images), pd.DataFrame(rows)


def source_augment_on(knobs: Mapping[str, float]) -> bool:
    """Whether the source knobs draw anything (a probability > 0).

    That is :func:`randomise_source` before the motion or :func:`acquisition_noise` after it.
    """
    knobs_on = (
        "p_remap",
        "p_blur",
        "p_geometry",
        "p_noise",
        "p_sharpen",
        "p_blur_axes",
        "p_texture",
    )
    return any(float(knobs.get(k, 0.0)) > 0 for k in knobs_on)


def acquisition_noise(
    data: torch.Tensor, rng: np.random.Generator, knobs: Mapping[str, float]
) -> torch.Tensor:
    """Rician noise of a random level at the simulation grid, drawn after the motion.

    A scanner's thermal noise enters k-space independently of the head's motion, so it is added
    to the moved image: with probability ``p_noise``, the magnitude of the image plus complex
    Gaussian noise of σ ~ U(0, ``noise_std``) (in units of the volume's mean intensity, 1 for
    the sources) in each part. The sample heads' backgrounds differ (a noisy floor in ROBEX, a
    zero one in the two templates), and the detail channels read that floor
    (``benchmarks/detail_levels.py``); a random noise level lets no head's own floor stand
    for motion.

    The draws from ``rng`` are three whatever their outcome when ``p_noise`` > 0, none
    otherwise (``data`` is then returned unchanged).

    Args:
        data: One volume ``(X, Y, Z)`` at the simulation grid, after its motion.
        rng: The pool sample's generator (after :func:`randomise_source`).
        knobs: :attr:`RecipeConfig.source_augment` (``p_noise``, ``noise_std``).

    Returns:
        The noisy volume (float32; non-negative, a magnitude image), or ``data``.
    """
    p_noise = float(knobs.get("p_noise", 0.0))
    if p_noise <= 0:
        return data
    u = rng.uniform(size=2)
    seed = int(rng.integers(2**62))
    if u[0] >= p_noise:
        return data
    sigma = float(u[1]) * float(knobs["noise_std"]) * float(data.float().mean())
    gen = torch.Generator().manual_seed(seed)
    real = data.float() + sigma * torch.randn(data.shape, generator=gen)
    imag = sigma * torch.randn(data.shape, generator=gen)
    return torch.sqrt(real * real + imag * imag)


def randomise_source(
    data: torch.Tensor, rng: np.random.Generator, knobs: Mapping[str, float], spacing_mm: float
) -> torch.Tensor:
    """New pose, size, contrast and sharpness for a source volume, drawn before its motion.

    Two training heads teach two contrasts and two sharpnesses, and an encoder trained on them
    read an unseen head's own sharpness and contrast as motion. Drawn at the simulation grid,
    before the k-space motion (so the artefact is that of the new image, as in a scan of that
    contrast and resolution), in the spirit of SynthSeg's domain randomisation (Billot et al.
    2023):

    - with probability ``p_geometry``: a zoom ``s = exp(u·log(1 + zoom))`` (u ~ U(±1)), a
      rotation about each axis ~ U(±``rotate_deg``) and a shift ~ U(±``shift_mm``) per axis about
      the grid centre (:func:`motionqc.synthetic.augment.affine_of_uniforms`, then
      ``resample_affine``): a larger, turned or off-centre head that then moves as drawn, so the
      label (the motion's score) is unchanged and the artefact keeps the sharpness of the
      simulation grid (the per-step geometry of
      :func:`motionqc.synthetic.augment.geometry_batch` interpolates at the encoder grid, which
      smooths the artefact with the anatomy);
    - with probability ``p_remap``: intensities over the 99.5th percentile are mapped through a
      piecewise-linear curve through 0 and ``remap_knots`` + 1 evenly spaced knots whose values
      ~ U(0.05, 1) (sorted, i.e. a T1-like order of tissues, with probability ``p_monotone``;
      else any order of tissues), then scaled back; the background stays dark;
    - with probability ``p_blur``: a Gaussian blur, σ ~ U(0, ``blur_mm``) mm;
    - with probability ``p_sharpen``: an unsharp mask ``x + a·(x − blur(x, sharpen_mm))``,
      ``a`` ~ U(0, ``sharpen``), clipped at 0: a sharper head than the source (the two
      templates are smoother than a single scan, and blurring alone cannot make them sharp);
    - with probability ``p_blur_axes``: a Gaussian blur with its own σ ~ U(0, ``blur_mm``) mm
      along each axis: an anisotropic point-spread function, as a scan acquired with thicker
      slices or partial Fourier along one axis has (a clean head whose axes differ in
      sharpness otherwise resembles a training head under motion, ``benchmarks/detail_levels.py``);
    - with probability ``p_texture``: a new in-head texture
      (:func:`motionqc.synthetic.texture.synthetic_texture`), last.

    The number of draws from ``rng`` is fixed whatever their outcome (the geometry's eight only
    when ``p_geometry`` > 0, after the others, then the sharpening's two only when
    ``p_sharpen`` > 0, then the per-axis blur's four only when ``p_blur_axes`` > 0, then the
    texture's five only when ``p_texture`` > 0); with every
    probability at 0 nothing is drawn and ``data`` is returned
    unchanged.

    Args:
        data: One volume ``(X, Y, Z)`` at the simulation grid.
        rng: The pool sample's generator.
        knobs: :attr:`RecipeConfig.source_augment`.
        spacing_mm: The voxel size of ``data``.

    Returns:
        The randomised volume (float32).
    """
    if not source_augment_on(knobs):
        return data
    p_remap, p_blur = float(knobs.get("p_remap", 0.0)), float(knobs.get("p_blur", 0.0))
    k = int(knobs["remap_knots"])
    u = rng.uniform(size=4)
    ys = rng.uniform(0.05, 1.0, size=k + 1)
    p_geometry = float(knobs.get("p_geometry", 0.0))
    if p_geometry > 0:
        g = rng.uniform(-1.0, 1.0, size=8)
        if (g[7] + 1) / 2 < p_geometry:
            zoom, angles, shift = affine_of_uniforms(g, knobs)
            data = resample_affine(data[None, None], zoom, angles, shift, spacing_mm)[0, 0]
    if u[0] < p_remap:
        top = float(torch.quantile(data.flatten()[::7], 0.995).clamp_min(1e-6))
        if u[1] < float(knobs["p_monotone"]):
            ys = np.sort(ys)
        xs = np.linspace(0.0, 1.0, k + 2)
        v = data.numpy().astype(np.float64) / top
        data = torch.from_numpy((np.interp(v, xs, np.r_[0.0, ys]) * top).astype(np.float32))
    if u[2] < p_blur:
        data = gaussian_blur(data, float(u[3]) * float(knobs["blur_mm"]) / spacing_mm)
    p_sharpen = float(knobs.get("p_sharpen", 0.0))
    if p_sharpen > 0:
        v = rng.uniform(size=2)
        if v[0] < p_sharpen:
            smooth = gaussian_blur(data, float(knobs["sharpen_mm"]) / spacing_mm)
            data = (data + float(v[1]) * float(knobs["sharpen"]) * (data - smooth)).clamp_min(0.0)
    p_axes = float(knobs.get("p_blur_axes", 0.0))
    if p_axes > 0:
        w = rng.uniform(size=4)
        if w[0] < p_axes:
            data = gaussian_blur(
                data, [float(a) * float(knobs["blur_mm"]) / spacing_mm for a in w[1:]]
            )
    return synthetic_texture(data, rng, knobs, spacing_mm)
