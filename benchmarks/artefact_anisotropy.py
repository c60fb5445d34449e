"""How much of the motion score one hand-made statistic of the image reads, per grid (no training).

TorchIO's ``Motion`` fills k-space segments along the image's **last** array axis and keeps the
unmoved spectrum in the segment that holds the k-space centre, so its artefact lives at high
spatial frequency along that axis. This probe corrupts each sample head with TorchIO's own
``Motion`` at known scores (the unseen-head test's protocol,
:func:`motionqc.evaluation.encoder_test.torchio_corruptions`), resamples it as ``motionqc score``
does to a 1 mm, a 2 mm and the encoder's 4 mm grid, and measures per axis the mean squared second
difference inside the head. The statistic is the log ratio of the last axis's energy to the
geometric mean of the other two (an anatomy's texture is roughly isotropic, the artefact is not).

For each grid it prints the statistic's Spearman correlation with the true score per head, and
the R² on each head of a line fitted (score ~ statistic) on the other heads, and writes one row per
volume to ``--out``::

    .venv/bin/python benchmarks/artefact_anisotropy.py --out build/anisotropy.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from motionqc.data.volumes import preprocess, sample_manifest
from motionqc.evaluation.encoder_test import torchio_corruptions

GRIDS = {1.0: (160, 192, 160), 2.0: (80, 96, 80), 4.0: (40, 48, 40)}
"""Voxel size (mm) → grid, the three encoders' geometries (``paper``, the 2 mm probe, ``sample``)."""


def axis_energy(volume: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Mean squared second difference along each axis, over the voxels inside ``mask``."""
    out = []
    for axis in range(3):
        n = volume.shape[axis]
        d2 = (
            volume.narrow(axis, 2, n - 2)
            - 2 * volume.narrow(axis, 1, n - 2)
            + volume.narrow(axis, 0, n - 2)
        )
        m = mask.narrow(axis, 1, n - 2)
        out.append(float((d2[m] ** 2).mean()))
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", nargs="+", default=["robex_atlas", "mni152_2009", "colin27"])
    parser.add_argument("--scores", nargs="+", type=float, default=[0, 0.3, 0.6, 1, 1.5, 2, 3, 4])
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    manifest = sample_manifest().set_index("volume_id")
    heads = {h: manifest.loc[h, "path"] for h in args.heads}
    rows = []
    for head, _, draw, moved, p in torchio_corruptions(heads, scores=args.scores, draws=args.draws):
        row = {"head": head, "draw": draw, "true": float(p["score"])}
        for spacing, shape in GRIDS.items():
            x = preprocess(moved, spacing, shape).data[0].double()
            mask = x > 0.2 * float(x.max())  # the head, not the background
            e = axis_energy(x, mask)
            row[f"stat_{spacing:g}mm"] = float(np.log(e[2] / np.sqrt(e[0] * e[1])))
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    for spacing in GRIDS:
        col = f"stat_{spacing:g}mm"
        for head in args.heads:
            own = table[table["head"] == head]
            rest = table[table["head"] != head]
            fit = LinearRegression().fit(rest[[col]], rest["true"])
            r2 = r2_score(own["true"], fit.predict(own[[col]]))
            rho = spearmanr(own[col], own["true"]).statistic
            print(
                f"{spacing:g} mm  {head:12s} Spearman {rho:+.3f}  R2 (line fitted on the others) {r2:+.3f}"
            )


if __name__ == "__main__":
    main()
