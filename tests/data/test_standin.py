"""motionqc.data.standin: pseudo-volumes at a manifest's paths, degraded as its ratings say."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from motionqc.data.standin import (
    BANDS_MM,
    THICKNESS_NOISE_SD,
    THICKNESS_PER_MM,
    main,
    select_rows,
    write_standin,
)
from motionqc.qc_task import qc_class

ROOT = Path(__file__).parents[2]


def test_selection_keeps_every_split_site_and_class_of_the_authors_manifest() -> None:
    table = pd.read_csv(ROOT / "data_manifest/ampscz.tsv", sep="\t", dtype={"subject": str})
    chosen = select_rows(table, 0.05, seed=0)
    rated = table["qc_score"].notna()
    for column in ("split", "site", "role"):
        assert set(chosen[column]) == set(table[column])
    pairs = zip(table[rated]["split"], table[rated]["qc_score"], strict=True)
    want = {(s, qc_class(q)) for s, q in pairs}
    got = {
        (s, qc_class(q))
        for s, q in zip(chosen["split"], chosen["qc_score"], strict=True)
        if not pd.isna(q)
    }
    assert got == want
    groups = table.fillna({"qc_score": -1}).groupby(["role", "split", "site", "qc_score"]).size()
    assert len(chosen) == sum(max(1, int(np.ceil(0.05 * n))) for n in groups)
    assert chosen.equals(select_rows(table, 0.05, seed=0))  # seeded
    assert not chosen.index.equals(select_rows(table, 0.05, seed=1).index)
    with pytest.raises(ValueError, match="fraction"):
        select_rows(table, 0.0)


def _manifest(path: Path) -> Path:
    rows = [
        # subject A: two sessions rated 4 (same anatomy, clean), one rated 1
        ("A_1", "A", 4, "train"), ("A_2", "A", 4, "train"), ("A_3", "A", 1, "train"),
        ("B_1", "B", 3, "val"), ("C_1", "C", 2, "test"), ("D_1", "D", None, "train"),
    ]  # fmt: skip
    table = pd.DataFrame(
        [
            {
                "volume_id": v,
                "dataset": "TOY",
                "site": "S1",
                "subject": s,
                "path": f"TOY/sub-{s}/{v}_T1w.nii.gz",
                "qc_score": q,
                "split": split,
            }
            for v, s, q, split in rows
        ]
    )
    table.to_csv(path, sep="\t", index=False)
    return path


def test_standin_volumes_sit_at_the_manifests_paths_and_follow_the_ratings(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "toy.tsv")
    out = tmp_path / "standin"
    result = write_standin([manifest], out, 1.0, grid=(48, 56, 48), progress=False)
    table = pd.read_csv(manifest, sep="\t")
    assert result["volume_id"].tolist() == table["volume_id"].tolist()
    saved = pd.read_csv(out / "standin_manifest.tsv", sep="\t")
    assert saved["volume_id"].tolist() == table["volume_id"].tolist()
    volumes = {}
    for row in result.itertuples():
        image = nib.load(out / row.path)
        assert image.shape == (48, 56, 48)
        volumes[row.volume_id] = np.asarray(image.dataobj, dtype=np.float32)
        rating = None if pd.isna(row.qc_score) else int(row.qc_score)
        lo, hi = BANDS_MM.get(rating, (0.0, 0.0))
        if hi == 0:
            assert row.standin_motion_mm == 0
        else:  # the applied motion's score lies in the rating's band (solver tolerance)
            assert lo - 0.02 <= row.standin_motion_mm <= hi + 0.02
    # one subject, one anatomy: its two clean sessions are the same volume, a bad one is not
    a1, a2, a3 = volumes["A_1"], volumes["A_2"], volumes["A_3"]
    scale = np.abs(a1).max()
    assert np.abs(a1 - a2).max() <= 1e-3 * scale
    assert np.abs(a1 - a3).mean() > 0.01 * scale
    # another subject is another anatomy (another deformation, perhaps another head)
    assert volumes["D_1"].shape == a1.shape and np.abs(volumes["D_1"] - a1).mean() > 0.01 * scale
    assert result.set_index("volume_id").loc["D_1", "standin_noise"] == 0  # unrated: clean
    # the synthetic thickness: one base per subject (its two clean sessions differ by noise only)
    thickness = result.set_index("volume_id")["thickness"]
    assert thickness.notna().all() and thickness.between(1.5, 3.5).all()
    assert abs(thickness["A_1"] - thickness["A_2"]) <= 6 * THICKNESS_NOISE_SD
    planted = THICKNESS_PER_MM * result.set_index("volume_id").loc["A_3", "standin_motion_mm"]
    change = thickness["A_3"] - (thickness["A_1"] + thickness["A_2"]) / 2
    assert abs(change - planted) <= 6 * THICKNESS_NOISE_SD  # same subject: base cancels
    assert saved["thickness"].tolist() == result["thickness"].tolist()


def test_standin_refuses_a_path_leaving_the_root(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "bad.tsv"
    pd.DataFrame(
        [{"volume_id": "x", "subject": "x", "path": "../outside.nii.gz", "qc_score": 4}]
    ).to_csv(manifest, sep="\t", index=False)
    assert main(["--like", str(manifest), "--fraction", "1", "--out", str(tmp_path / "o")]) == 1
    assert "not inside the data root" in capsys.readouterr().err
    assert not (tmp_path / "outside.nii.gz").exists()
