"""The unseen-head test's grid and its per-head table."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
from conftest import head_phantom, write_nifti
from scipy.stats import spearmanr

from motionqc.evaluation.encoder_test import head_table, load_native


def test_load_native_puts_a_2mm_head_on_a_canonical_1mm_grid(tmp_path):
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS, 2 mm
    data = head_phantom((24, 28, 22))
    path = write_nifti(tmp_path / "ixi_T1.nii.gz", data, affine)
    native = load_native(path)
    assert native.spacing == (2.0, 2.0, 2.0) and native.shape[1:] == (24, 28, 22)
    fine = load_native(path, 1.0)
    assert fine.spacing == (1.0, 1.0, 1.0) and fine.orientation == ("R", "A", "S")
    assert fine.shape[1:] == (48, 56, 44)
    # the same world point holds the same intensity on both grids
    world = np.array([0.0, 0.0, 0.0, 1.0])
    ijk_native = np.round(np.linalg.solve(native.affine, world)[:3]).astype(int)
    ijk_fine = np.round(np.linalg.solve(fine.affine, world)[:3]).astype(int)
    assert abs(float(native.data[(0, *ijk_native)]) - float(fine.data[(0, *ijk_fine)])) < 20
    assert nib.load(path).shape == (24, 28, 22)


def test_head_table_reads_each_heads_clean_score_ranking_and_offset():
    rng = np.random.default_rng(0)
    truth = np.repeat([0.0, 0.5, 1.0, 2.0, 4.0], 2)
    rows = []
    for head, offset, noise in (("a", 1.5, 0.0), ("b", 0.0, 0.8)):
        pred = truth + offset + rng.normal(0, noise, truth.size)
        rows += [{"head": head, "true": t, "pred": p} for t, p in zip(truth, pred, strict=True)]
    table = pd.DataFrame(rows)
    out = head_table(table).set_index("head")
    b = table[table["head"] == "b"]
    assert out.at["a", "clean_pred"] == 1.5 and out.at["a", "offset"] == 1.5
    assert out.at["a", "spearman"] == 1.0
    expected = spearmanr(b["true"], b["pred"]).statistic
    assert np.isclose(out.at["b", "spearman"], expected)
    assert np.isclose(out.at["b", "clean_pred"], np.median(b["pred"][b["true"] == 0]))
    assert np.isclose(out.at["b", "mae"], np.abs(b["pred"] - b["true"]).mean())
    assert out["n"].tolist() == [10, 10]
