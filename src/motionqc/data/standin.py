"""A stand-in for restricted data: pseudo-volumes at a manifest's own paths, degraded by its ratings.

The poster's images (AMPSCZ, HCP-EP) are NDA-restricted, so the paper profile's manifest path
cannot be run without them. ``python -m motionqc.data.standin --like data_manifest/ampscz.tsv
[--like data_manifest/hcpep.tsv] --fraction F --out DIR`` writes, for a fraction of the rows,
a pseudo-volume at each row's exact relative ``path`` under ``DIR``:

- **selection**: within every (dataset, role, split, site, QC class) group, ``ceil(F · size)``
  rows (at least one), taken in a seeded order — so every split, site and class of the
  manifest stays present;
- **anatomy**: per *subject* (hash of dataset and subject), one of ``anatomies_per_head`` seeded
  affine + elastic deformations (:func:`motionqc.synthetic.heads.augment_heads`) of one of the bundled
  heads: a subject's sessions share an anatomy (``standin_head`` names it, e.g. ``colin27~2``);
- **degradation consistent with the rating**: k-space motion (:func:`motionqc.physics.motion.simulate_motion`)
  whose score under :data:`motionqc.physics.score.SCORE_CONVENTION` is drawn from the band of the row's
  ``qc_score`` (:data:`BANDS_MM`: 4 → clean, 3 → 0.4–1.2 mm, 2 → 1.2–2.4 mm, 1 → 2.4–4 mm), and
  Rician noise growing as the rating falls; rows without a rating are left clean;
- the Clinica ``t1-linear`` grid (1 mm, 169×208×179) the manifests' paths name.

``DIR/standin_manifest.tsv`` holds the chosen rows with their original columns plus
``standin_head``, ``standin_motion_mm`` (the applied motion score) and ``standin_noise``, so a
run on the stand-in can be checked against what was put in, and a **synthetic** ``thickness``
column (mm) for notebook 07's real-data path: a subject's base thickness (:data:`THICKNESS_MM`
± :data:`THICKNESS_SUBJECT_SD`, shared by its sessions) plus a planted motion effect
(:data:`THICKNESS_PER_MM` per mm of ``standin_motion_mm``) plus per-volume noise
(:data:`THICKNESS_NOISE_SD`). It is not measured from the pseudo-volume: it exists so that the
thickness model runs on a manifest and its slope on the applied motion can be compared with the
planted one. Point ``MOTIONQC_DATA_ROOT`` at
``DIR`` to use it wherever the real data would go.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

__all__ = [
    "BANDS_MM",
    "NOISE",
    "GRID",
    "THICKNESS_MM",
    "THICKNESS_SUBJECT_SD",
    "THICKNESS_PER_MM",
    "THICKNESS_NOISE_SD",
    "select_rows",
    "standin_thickness",
    "standin_volume",
    "write_standin",
    "main",
]

BANDS_MM: dict[int, tuple[float, float]] = {
    4: (0.0, 0.0),
    3: (0.4, 1.2),
    2: (1.2, 2.4),
    1: (2.4, 4.0),
}
"""QC score → range of the motion score (mm) a stand-in volume with that rating is given."""

NOISE: dict[int, float] = {4: 0.0, 3: 0.01, 2: 0.02, 1: 0.03}
"""QC score → Rician noise σ (share of the volume's 99.5th percentile)."""

GRID = (169, 208, 179)
"""Clinica ``t1-linear``'s cropped 1 mm MNI grid."""

THICKNESS_MM = 2.5
"""Mean base cortical thickness (mm) of the stand-in's subjects."""

THICKNESS_SUBJECT_SD = 0.1
"""Spread (mm) of the subjects' base thickness."""

THICKNESS_PER_MM = -0.05
"""Planted motion effect on the stand-in's thickness: mm per mm of applied motion score."""

THICKNESS_NOISE_SD = 0.03
"""Per-volume noise (mm) of the stand-in's thickness."""

_GROUPS = ("dataset", "role", "split", "site", "qc_score")


def _stable(*parts: object) -> int:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def select_rows(table: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """The rows a stand-in covers: ``ceil(fraction · n)`` (≥ 1) of every group, seeded.

    Args:
        table: A manifest (groups by whichever of dataset, role, split, site and qc_score it has).
        fraction: Share of each group, in (0, 1].
        seed: Seed of the order rows are taken in.

    Returns:
        The chosen rows, in the manifest's order.

    Raises:
        ValueError: If ``fraction`` is not in (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keys = [c for c in _GROUPS if c in table.columns]
    filled = table[keys].astype(str) if keys else pd.DataFrame(index=table.index)
    keep = []
    for _, group in table.groupby([filled[k] for k in keys], sort=True, dropna=False):
        order = sorted(group.index, key=lambda i: _stable(seed, table.at[i, "volume_id"]))
        keep += order[: max(1, math.ceil(fraction * len(group)))]
    return table.loc[sorted(keep)]


def standin_volume(
    head: torch.Tensor, affine: np.ndarray, qc_score: float | None, seed: int
) -> tuple[np.ndarray, float, float]:
    """Degrade a clean head as a volume rated ``qc_score`` would be.

    Args:
        head: ``(X, Y, Z)`` clean volume (the subject's anatomy).
        affine: Its voxel-to-RAS matrix.
        qc_score: The row's rating (1–4; ``None``/NaN: left clean).
        seed: Seed of the motion and noise draws.

    Returns:
        ``(volume float32, motion score mm, noise σ)``.
    """
    from motionqc.physics.motion import simulate_motion
    from motionqc.synthetic.parameters import sample_scored_motion

    rng = np.random.default_rng(seed)
    rating = None if qc_score is None or pd.isna(qc_score) else int(qc_score)
    lo, hi = BANDS_MM.get(rating, (0.0, 0.0))
    target = float(rng.uniform(lo, hi)) if hi > 0 else 0.0
    data = head.float()
    score = 0.0
    if target > 0:
        p = sample_scored_motion(target, int(rng.integers(2**31)), affine=affine, shape=data.shape)
        data = simulate_motion(data, p["degrees"], p["translation"], p["times"], affine)
        score = float(p["score"])
    sigma = NOISE.get(rating, 0.0)
    if sigma > 0:
        top = float(torch.quantile(data.flatten()[::11], 0.995))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        n1 = torch.randn(data.shape, generator=gen) * sigma * top
        n2 = torch.randn(data.shape, generator=gen) * sigma * top
        data = torch.sqrt((data + n1) ** 2 + n2**2)
    return data.numpy().astype(np.float32), score, sigma


def standin_thickness(
    dataset: str, subject: str, volume_id: str, motion_mm: float, seed: int = 0
) -> float:
    """The stand-in's synthetic thickness of one volume (see the module docstring).

    Args:
        dataset: The row's dataset (with ``subject``, it seeds the subject's base thickness).
        subject: The row's subject.
        volume_id: The row's volume (seeds its noise).
        motion_mm: The motion score applied to the volume.
        seed: The stand-in's seed.

    Returns:
        Thickness in mm.
    """
    base = np.random.default_rng(_stable(seed, "thickness", dataset, subject) % (2**31))
    noise = np.random.default_rng(_stable(seed, "thickness", volume_id) % (2**31))
    return float(
        THICKNESS_MM
        + THICKNESS_SUBJECT_SD * base.standard_normal()
        + THICKNESS_PER_MM * float(motion_mm)
        + THICKNESS_NOISE_SD * noise.standard_normal()
    )


def _subject_anatomy(
    heads: dict, dataset: str, subject: str, seed: int, per_head: int, cache: dict
) -> tuple[str, object]:
    """The subject's anatomy: one of ``per_head`` seeded affine + elastic deformations of a head.

    An elastic deformation at 1 mm takes seconds, so each (head, k) is drawn once (``cache``) and
    every subject hashed to it shares it.
    """
    from motionqc.synthetic.heads import augment_heads

    names = sorted(heads)
    key = _stable(seed, dataset, subject)
    head, k = names[key % len(names)], (key // len(names)) % per_head
    if (head, k) not in cache:
        pseudo = augment_heads(
            {head: heads[head]}, 1, seed=_stable(seed, head, k) % (2**31), keep_original=False
        )
        cache[(head, k)] = next(iter(pseudo.values()))
    return f"{head}~{k}", cache[(head, k)]


def write_standin(
    manifests: Sequence[str | Path],
    out: str | Path,
    fraction: float,
    seed: int = 0,
    grid: Sequence[int] = GRID,
    progress: bool = True,
    anatomies_per_head: int = 4,
) -> pd.DataFrame:
    """Write the stand-in volumes and ``standin_manifest.tsv`` (see the module docstring).

    Args:
        manifests: Manifests to stand in for (their ``path`` relative to the data root).
        out: The stand-in data root.
        fraction: Share of each group of rows (:func:`select_rows`).
        seed: Seed of the selection, anatomies, motion and noise.
        grid: Grid of the volumes (1 mm).
        progress: Show a progress bar.
        anatomies_per_head: Deformed copies of each bundled head the subjects are spread over.

    Returns:
        The stand-in manifest (also written to ``out/standin_manifest.tsv``).

    Raises:
        ValueError: If a manifest has no ``path``/``volume_id`` column or a path is absolute or
            leaves ``out``.
    """
    from tqdm.auto import tqdm

    from motionqc.data.volumes import preprocess, sample_manifest

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    tables = []
    for manifest in manifests:
        table = pd.read_csv(manifest, sep="\t", dtype={"subject": str, "session": str})
        for column in ("volume_id", "path", "subject"):
            if column not in table.columns:
                raise ValueError(f"{manifest}: no {column!r} column")
        tables.append(select_rows(table, fraction, seed))
    chosen = pd.concat(tables, ignore_index=True)
    sample = sample_manifest().set_index("volume_id")
    heads = {h: preprocess(sample.loc[h, "path"], 1.0, tuple(grid)) for h in sample.index}
    rows = []
    cache: dict = {}
    for row in tqdm(chosen.to_dict("records"), desc="stand-in", disable=not progress):
        rel = Path(str(row["path"]))
        target = (root / rel).resolve()
        if rel.is_absolute() or root.resolve() not in target.parents:
            raise ValueError(f"{row['volume_id']}: path {rel} is not inside the data root")
        head, anatomy = _subject_anatomy(
            heads, str(row.get("dataset", "")), str(row["subject"]), seed, anatomies_per_head, cache
        )
        volume, score, sigma = standin_volume(
            anatomy.data[0],
            np.asarray(anatomy.affine),
            row.get("qc_score"),
            _stable(seed, "degrade", row["volume_id"]) % (2**31),
        )
        image = nib.Nifti1Image(volume, np.asarray(anatomy.affine))
        image.set_data_dtype(np.int16)  # scaled by nibabel: a quarter of float32's size
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.nii.gz")
        nib.save(image, tmp)
        os.replace(tmp, target)
        thickness = standin_thickness(
            str(row.get("dataset", "")), str(row["subject"]), str(row["volume_id"]), score, seed
        )
        rows.append(
            {
                **row,
                "standin_head": head,
                "standin_motion_mm": score,
                "standin_noise": sigma,
                "thickness": round(thickness, 4),
            }
        )
    result = pd.DataFrame(rows)
    result.to_csv(root / "standin_manifest.tsv", sep="\t", index=False)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (``python -m motionqc.data.standin --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.data.standin",
        description=__doc__.split("\n\n")[0],
        epilog="Then: MOTIONQC_DATA_ROOT=DIR runs the paper profile's manifests on the stand-in.",
    )
    parser.add_argument("--like", type=Path, action="append", required=True, help="a manifest")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of each group of rows")
    parser.add_argument("--out", type=Path, required=True, help="the stand-in data root")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = write_standin(args.like, args.out, args.fraction, args.seed)
    except (OSError, ValueError) as exc:
        print(f"motionqc.data.standin: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    counts = result.groupby([c for c in ("dataset", "split") if c in result]).size()
    print(f"{len(result)} stand-in volumes in {args.out} (standin_manifest.tsv)")
    print(counts.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
