"""The synthetic set: a parameter table and a torch Dataset that materialises it on the fly.

Instead of the poster's 110,100 corrupted volumes on disk, the synthetic set is a table of motion
parameters (a few MB; drawn by :mod:`motionqc.synthetic.parameters`) from which each sample is
materialised on the fly, deterministically per row: :func:`build_parameter_table` writes one row
per sample with splits by source volume, and :class:`SyntheticMotionDataset` applies the motion
plus the authors' extra TorchIO augmentations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torchio as tio
from torch.utils.data import Dataset

from motionqc.physics.motion import check_affine, simulate_motion
from motionqc.physics.score import (
    score_motion,
)
from motionqc.synthetic.parameters import sample_authors_motion, sample_motion, seeded_rng

__all__ = [
    "build_parameter_table",
    "export_nifti",
    "read_parameter_table",
    "row_params",
    "split_sources",
    "SyntheticMotionDataset",
]


_SPLITS = ("train", "val", "test")


def split_sources(
    sources: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, str]:
    """Assign each source volume to one split (train/val/test), so no source is in two splits.

    Args:
        sources: Source volume ids (unique).
        fractions: Shares of train, val, test (normalised); with few sources every split with a
            positive share still gets at least one source while sources last.
        seed: Seed of the shuffle.

    Returns:
        Mapping source id → split name.

    Raises:
        ValueError: For repeated ids, no source, or bad fractions.
    """
    ids = list(sources)
    if not ids:
        raise ValueError("split_sources needs at least one source volume")
    if len(set(ids)) != len(ids):
        raise ValueError("source ids must be unique")
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative shares, got {tuple(fractions)}")
    f = f / f.sum()
    order = seeded_rng(seed).permutation(len(ids))
    counts = np.floor(f * len(ids)).astype(int)
    while counts.sum() < len(ids):  # hand leftovers to the largest remainders
        counts[int(np.argmax(f * len(ids) - counts))] += 1
    for k in np.flatnonzero((f > 0) & (counts == 0)):  # no empty split while sources last
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    out, start = {}, 0
    for name, c in zip(_SPLITS, counts, strict=True):
        for j in order[start : start + c]:
            out[ids[j]] = name
        start += c
    return out


def build_parameter_table(
    sources: Sequence[str],
    samples_per_source: int,
    seed: int = 0,
    *,
    sampler: str = "authors",
    splits: Mapping[str, str] | None = None,
    geometry: Mapping[str, tuple[object, Sequence[int]]] | None = None,
    path: str | Path | None = None,
) -> pd.DataFrame:
    """One row per synthetic sample: source, index, seed, n, parameters, score, split.

    Args:
        sources: Source volume ids.
        samples_per_source: Samples drawn per source (the poster: 300).
        seed: Base seed; row seeds are derived from it, the source and the sample index.
        sampler: ``"authors"`` (:func:`sample_authors_motion`) or ``"uniform"``
            (:func:`sample_motion` with a target ~ U(0, 4) mm, exact scores).
        splits: Source → split; default :func:`split_sources` with ``seed``.
        geometry: Source → (affine, shape), for the physically exact score centred on each
            volume (``score_applied`` column); the world origin when omitted.
        path: Write the table there (``.tsv`` or ``.parquet``).

    Returns:
        The table; ``degrees``, ``translation`` and ``times`` are JSON lists.

    Raises:
        ValueError: For an unknown sampler, a non-positive count or a source without a split.
    """
    if sampler not in ("authors", "uniform"):
        raise ValueError(f"sampler must be 'authors' or 'uniform', not {sampler!r}")
    if int(samples_per_source) != samples_per_source or samples_per_source < 1:
        raise ValueError(f"samples_per_source must be a positive integer, got {samples_per_source}")
    splits = dict(splits) if splits is not None else split_sources(sources, seed=seed)
    rows = []
    for s_idx, source in enumerate(sources):
        if source not in splits:
            raise ValueError(f"source {source!r} has no split")
        affine, shape = (geometry or {}).get(source, (None, None))
        for k in range(int(samples_per_source)):
            row_seed = int(np.random.SeedSequence([int(seed), s_idx, k]).generate_state(1)[0])
            if sampler == "authors":
                p = sample_authors_motion(row_seed)
            else:
                target = float(seeded_rng(row_seed).uniform(0.0, 4.0))
                p = sample_motion(target, row_seed, affine=affine, shape=shape)
                p.update(target=target, label=p["score"], motion_free=False)
            applied = score_motion(p["degrees"], p["translation"], affine, shape) if p["n"] else 0.0
            rows.append(
                {
                    "source": source,
                    "sample": k,
                    "split": splits[source],
                    "seed": row_seed,
                    "n": int(p["n"]),
                    "target": float(p["target"]),
                    "label": float(p["label"]),
                    "score": float(p["score"]),
                    "score_applied": float(applied),
                    "motion_free": bool(p["motion_free"]),
                    "degrees": json.dumps(np.round(p["degrees"], 8).tolist()),
                    "translation": json.dumps(np.round(p["translation"], 8).tolist()),
                    "times": json.dumps([float(t) for t in p["times"]]),
                }
            )
    table = pd.DataFrame(rows)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            table.to_parquet(path, index=False)
        else:
            table.to_csv(path, sep="\t", index=False)
    return table


def read_parameter_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`build_parameter_table` (TSV or Parquet)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t")


def row_params(row: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Degrees ``(n, 3)``, translations ``(n, 3)`` and times ``(n,)`` of a parameter-table row."""
    deg = np.asarray(json.loads(row["degrees"]), dtype=np.float64).reshape(-1, 3)
    tra = np.asarray(json.loads(row["translation"]), dtype=np.float64).reshape(-1, 3)
    tim = np.asarray(json.loads(row["times"]), dtype=np.float32).reshape(-1)
    return deg, tra, tim


class SyntheticMotionDataset(Dataset):
    """Materialise synthetic samples on the fly: motion + the authors' extra augmentations.

    Per row, in the authors' order: left-right flip (p 0.5), elastic deformation (p 0.7), the
    motion of the row (:func:`motionqc.physics.motion.simulate_motion`), gamma and bias field (p 0.5
    each), intensity rescale to [0, U(0.9, 1.1)]. Every random draw is seeded by the row's seed,
    so an index always gives the same volume.

    Args:
        table: Parameter table (:func:`build_parameter_table`).
        volumes: Source id → preprocessed ``tio.ScalarImage`` (one channel).
        split: Keep only this split (``None``: all rows).
        augment: Apply the extra augmentations (else motion only).
        p_elastic: Probability of the elastic deformation.
        p_flip: Probability of the left-right flip.
        p_intensity: Probability of each of gamma and bias field.
        backend: Motion backend (see :func:`simulate_motion`).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        volumes: Mapping[str, tio.ScalarImage],
        split: str | None = None,
        *,
        augment: bool = True,
        p_elastic: float = 0.7,
        p_flip: float = 0.5,
        p_intensity: float = 0.5,
        backend: str = "auto",
    ) -> None:
        if split is not None and split not in _SPLITS:
            raise ValueError(f"split must be one of {', '.join(_SPLITS)} or None, not {split!r}")
        rows = table if split is None else table[table["split"] == split]
        missing = sorted(set(rows["source"]) - set(volumes))
        if missing:
            raise ValueError(f"no volume given for source(s): {', '.join(map(str, missing[:5]))}")
        self.table = rows.reset_index(drop=True)
        self.volumes = dict(volumes)
        self.augment = augment
        self.p_elastic, self.p_flip, self.p_intensity = p_elastic, p_flip, p_intensity
        self.backend = backend

    def __len__(self) -> int:
        return len(self.table)

    def pre_motion(self, image: tio.ScalarImage, rng: np.random.Generator) -> tio.ScalarImage:
        """The augmentations before the motion: left-right flip, then elastic deformation.

        Draws each decision from ``rng`` (the row's generator) and the elastic field from torch's
        global generator, which the caller seeds with the row's seed.
        """
        flip, elastic = self.pre_motion_decisions(rng)
        if flip:
            image = tio.Flip(axes=(0,))(image)
        if elastic:
            image = tio.RandomElasticDeformation(
                num_control_points=7, max_displacement=8, image_interpolation="linear"
            )(image)
        return image

    def pre_motion_decisions(self, rng: np.random.Generator) -> tuple[bool, bool]:
        """Draw whether :meth:`pre_motion` flips and deforms (two draws when augmenting)."""
        if not self.augment:
            return False, False
        flip = bool(rng.uniform() < self.p_flip)
        return flip, bool(rng.uniform() < self.p_elastic)

    def row_source(self, index: int) -> tuple[pd.Series, np.random.Generator, tio.ScalarImage]:
        """A row, its seeded generator and a copy of its clean source (before any draw).

        Raises:
            IndexError: If ``index`` is out of range.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        row = self.table.iloc[index]
        source = self.volumes[row["source"]]
        rng = np.random.default_rng(int(row["seed"]) + 1)
        return row, rng, tio.ScalarImage(tensor=source.data.clone().float(), affine=source.affine)

    def __getitem__(self, index: int) -> dict[str, object]:
        """Return ``{"image": (1, X, Y, Z) float32, "label", "score", "source", "index"}``."""
        row, rng, image = self.row_source(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(row["seed"]))
            image = self.pre_motion(image, rng)
            deg, tra, tim = row_params(row)
            data = image.data
            if len(tim):
                data = simulate_motion(data, deg, tra, tim, image.affine, backend=self.backend)
            image = tio.ScalarImage(tensor=data, affine=image.affine)
            if self.augment and rng.uniform() < self.p_intensity:
                image = tio.RandomGamma(log_gamma=(-0.1, 0.1))(image)
            if self.augment and rng.uniform() < self.p_intensity:
                image = tio.RandomBiasField(coefficients=(0.0, 0.35))(image)
            if self.augment:
                image = tio.RescaleIntensity(out_min_max=(0.0, float(rng.uniform(0.9, 1.1))))(image)
        return {
            "image": image.data.float(),
            "label": float(row["label"]),
            "score": float(row["score"]),
            "source": str(row["source"]),
            "index": int(index),
        }


def export_nifti(
    dataset: SyntheticMotionDataset, out_dir: str | Path, indices: Sequence[int] | None = None
) -> pd.DataFrame:
    """Write samples as NIfTI files plus a ``samples.tsv`` index.

    Args:
        dataset: The dataset to export.
        out_dir: Output folder (created).
        indices: Samples to write (default all).

    Returns:
        The index table (file name, source, sample, label, score).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(dataset)) if indices is None else indices:
        item = dataset[int(i)]
        row = dataset.table.iloc[int(i)]
        name = f"{row['source']}_sample-{int(row['sample']):04d}_T1w.nii.gz"
        affine = check_affine(dataset.volumes[row["source"]].affine)
        nib.save(nib.Nifti1Image(item["image"][0].numpy(), affine), str(out / name))
        rows.append(
            {
                "file": name,
                "source": row["source"],
                "sample": int(row["sample"]),
                "label": item["label"],
                "score": item["score"],
            }
        )
    index = pd.DataFrame(rows)
    index.to_csv(out / "samples.tsv", sep="\t", index=False)
    return index
