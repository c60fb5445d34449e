"""motionqc.data.bids: manifests from small BIDS trees written by the tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import head_phantom, write_nifti

from motionqc.data.bids import (
    MRART_TO_QC,
    find_t1w,
    manifest_from_bids,
    manifest_from_mrart,
    parse_entities,
)
from motionqc.data.volumes import REQUIRED_COLUMNS, ManifestError, load_volume


def _tree(root: Path) -> Path:
    for rel in [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T2w.nii.gz",  # not a T1w: ignored
        "sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz",
        "sub-02/ses-b/anat/sub-02_ses-b_run-2_T1w.nii",
    ]:
        write_nifti(root / rel, head_phantom((8, 9, 10)))
    (root / "participants.tsv").write_text("participant_id\tsite\nsub-01\tSiteA\nsub-02\tSiteB\n")
    return root


def test_find_t1w_and_entities(tmp_path: Path) -> None:
    root = _tree(tmp_path / "bids")
    names = [p.name for p in find_t1w(root)]
    assert names == ["sub-01_T1w.nii.gz", "sub-02_ses-a_T1w.nii.gz", "sub-02_ses-b_run-2_T1w.nii"]
    assert [p.name for p in find_t1w(root, ["02"])] == names[1:]
    assert parse_entities(root / names[2]) == {"sub": "02", "ses": "b", "run": "2"}


def test_manifest_from_bids_with_ratings(tmp_path: Path) -> None:
    root = _tree(tmp_path / "bids")
    ratings = tmp_path / "ratings.tsv"
    ratings.write_text("bids_name\tqc_score\nsub-01_T1w.nii.gz\t4\nsub-02_ses-a_T1w\t2\n")
    df = manifest_from_bids(root, ratings, dataset="toy")
    assert list(df.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert df["volume_id"].tolist() == ["sub-01_T1w", "sub-02_ses-a_T1w", "sub-02_ses-b_run-2_T1w"]
    assert df["qc_score"].tolist()[:2] == [4, 2] and pd.isna(df["qc_score"].iloc[2])
    assert df["site"].tolist() == ["SiteA", "SiteB", "SiteB"]
    assert df["session"].tolist() == ["", "a", "b"]
    assert all(load_volume(p).shape == (8, 9, 10) for p in df["path"])


def test_manifest_from_bids_reads_the_reports_ratings_export(tmp_path: Path) -> None:
    root = _tree(tmp_path / "bids")
    ratings = tmp_path / "study_ratings.tsv"  # the columns motionqc.app.report.RATING_COLUMNS names
    ratings.write_text(
        "bids_name\trating\tcomment\trater\ttimestamp\n"
        "sub-01_T1w\t3\tslight ringing\tA\t2026-12-01T10:00:00.000Z\n"
        "sub-02_ses-b_run-2_T1w\t\tnot sure\tA\t2026-12-01T10:01:00.000Z\n"
    )
    df = manifest_from_bids(root, ratings)
    assert df["qc_score"].tolist()[0] == 3 and df["qc_score"].isna().tolist()[1:] == [True, True]
    # a manifest's own qc_score wins over a rating column
    both = tmp_path / "both.tsv"
    both.write_text("bids_name\tqc_score\trating\nsub-01_T1w\t4\t1\n")
    assert manifest_from_bids(root, both)["qc_score"].iloc[0] == 4


def test_manifest_from_bids_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="BIDS folder not found"):
        manifest_from_bids(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no sub-"):
        manifest_from_bids(tmp_path / "empty")
    root = _tree(tmp_path / "bids")
    bad = tmp_path / "bad.tsv"
    bad.write_text("bids_name\tqc_score\nsub-01_T1w\t9\n")
    with pytest.raises(ManifestError, match="score 9"):
        manifest_from_bids(root, bad)
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("name\trating\nsub-01_T1w\t3\n")
    with pytest.raises(ManifestError, match="no column 'bids_name'"):
        manifest_from_bids(root, wrong)


def test_manifest_from_mrart_layout(tmp_path: Path) -> None:
    root = tmp_path / "ds004173"
    scores = ["bids_name\tscore"]
    for i, sub in enumerate(["000103", "000148"]):
        for j, acq in enumerate(["standard", "headmotion1", "headmotion2"]):
            name = f"sub-{sub}_acq-{acq}_T1w"
            write_nifti(
                root / f"sub-{sub}" / "anat" / f"{name}.nii.gz", head_phantom((6, 6, 6), seed=i + j)
            )
            scores.append(f"{name}\t{min(3, j + 1 + i)}")
    (root / "derivatives").mkdir()
    (root / "derivatives" / "scores.tsv").write_text("\n".join(scores) + "\n")
    df = manifest_from_mrart(root)
    assert len(df) == 6 and set(df["acq"]) == {"standard", "headmotion1", "headmotion2"}
    assert (df["dataset"] == "MR-ART").all() and (df["site"] == "MR-ART").all()
    assert df["qc_score"].tolist() == [MRART_TO_QC[s] for s in df["mrart_score"]]
    first = df.set_index("volume_id").loc["sub-000103_acq-standard_T1w"]
    assert first.mrart_score == 1 and first.qc_score == 4  # clean scan -> best QC class
    with pytest.raises(ManifestError, match="scores TSV not found"):
        manifest_from_mrart(root, tmp_path / "absent.tsv")
