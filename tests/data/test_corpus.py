"""The corpus builder: IXI-layout folders, the split by subject, checksums, test-only heads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import head_phantom, write_nifti

from motionqc.data.corpus import (
    IXI_LICENCE,
    LABEL_MAP,
    TEST_ONLY,
    corpus_split,
    label_map_rows,
    load_corpus,
    main,
    manifest_from_ixi,
    training_heads,
)
from motionqc.data.volumes import ManifestError


def _ixi_tree(root: Path, n: int = 12) -> list[Path]:
    """Real NIfTI files named as the IXI tarball (``-T1``) and a derivative (``_T1``) name them."""
    files = []
    for i in range(n):
        site = ("HH", "Guys", "IOP")[i % 3]
        sep = "-" if i % 2 else "_"
        name = f"IXI{100 + i:03d}-{site}-{1000 + i:04d}{sep}T1.nii.gz"
        folder = root / ("t1" if i % 2 else "t1/nested")
        files.append(write_nifti(folder / name, head_phantom(seed=i)))
    write_nifti(root / "t1" / "IXI999-HH-0001-T2.nii.gz", head_phantom())  # not a T1w
    (root / "t1" / "notes.txt").write_text("not a volume")
    return files


def test_manifest_from_ixi_reads_both_layouts_with_sha256(tmp_path: Path) -> None:
    files = _ixi_tree(tmp_path / "ixi")
    table = manifest_from_ixi(tmp_path / "ixi", data_root=tmp_path)
    assert len(table) == len(files)
    assert table["volume_id"].is_monotonic_increasing
    row = table.set_index("volume_id").loc["IXI101-Guys-1001"]
    assert (row["dataset"], row["site"], row["subject"]) == ("IXI", "Guys", "IXI101")
    assert row["path"] == "ixi/t1/IXI101-Guys-1001-T1.nii.gz"  # relative to the data root
    assert row["licence"] == IXI_LICENCE and row["qc_score"] == ""
    for vid, path in zip(table["volume_id"], table["path"], strict=True):
        digest = hashlib.sha256((tmp_path / path).read_bytes()).hexdigest()
        assert table.set_index("volume_id").at[vid, "sha256"] == digest
    assert "IXI999" not in set(table["subject"])  # the T2w file is not a T1w


def test_manifest_from_ixi_refuses_two_files_of_one_subject(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a" / "IXI002-HH-0002-T1.nii.gz", head_phantom())
    write_nifti(tmp_path / "b" / "IXI002-HH-0002_T1.nii.gz", head_phantom())
    with pytest.raises(ManifestError, match="IXI002") as err:
        manifest_from_ixi(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ManifestError, match="no IXI T1w file"):
        manifest_from_ixi(tmp_path / "a" / "missing")


def _table(n_subjects: int = 40) -> pd.DataFrame:
    rows = []
    for s in range(n_subjects):
        for session in range(1 + s % 2):  # some subjects scanned twice
            rows.append(
                {"volume_id": f"IXI{s:03d}_{session}", "dataset": "IXI", "subject": f"IXI{s:03d}"}
            )
    rows += [
        {"volume_id": "child", "dataset": "other", "subject": "child", "use": "train or test"},
        {"volume_id": "otsu", "dataset": "other", "subject": "otsu", "use": TEST_ONLY},
        {"volume_id": "ixi_odd", "dataset": "IXI", "subject": "IXI900", "use": TEST_ONLY},
        {"volume_id": "labels_01", "dataset": "labels", "subject": "l01", "use": LABEL_MAP},
    ]
    return pd.DataFrame(rows).fillna({"use": "train or test"})


def test_corpus_split_is_by_subject_seeded_and_keeps_test_only_heads_out_of_training() -> None:
    table = _table()
    split = corpus_split(table, seed=3)
    assert split.groupby("subject")["split"].nunique().max() == 1  # no subject in two splits
    ixi = split[(split["dataset"] == "IXI") & (split["use"] != TEST_ONLY)]
    counts = ixi.drop_duplicates("subject")["split"].value_counts()
    assert counts["test"] == 5 and counts["val"] == 3 and counts["train"] == 32  # of 40
    by_id = split.set_index("volume_id")
    assert by_id.loc[["child", "otsu"], "split"].tolist() == ["test", "test"]
    assert by_id.loc[["child", "otsu"], "test_set"].tolist() == ["cross_scanner"] * 2
    assert by_id.at["ixi_odd", "split"] == "test" and by_id.at["ixi_odd", "test_set"] == "held_out"
    assert by_id.at["labels_01", "split"] == "labels"
    assert (split.loc[split["split"] != "test", "test_set"] == "").all()
    again = corpus_split(table, seed=3)
    assert again["split"].tolist() == split["split"].tolist()
    other = corpus_split(table, seed=4)
    assert other["split"].tolist() != split["split"].tolist()
    train, val, test, maps = training_heads(split)
    assert "otsu" in test and "otsu" not in train + val and maps == ("labels_01",)


def test_training_heads_refuses_a_test_only_head_in_training() -> None:
    split = corpus_split(_table(), seed=0)
    split.loc[split["volume_id"] == "otsu", "split"] = "train"
    with pytest.raises(ValueError, match="otsu"):
        training_heads(split)


def test_load_corpus_refuses_a_file_that_no_longer_matches_its_sha256(tmp_path: Path) -> None:
    _ixi_tree(tmp_path / "ixi", n=6)
    write_nifti(tmp_path / "labels" / "seg_01.nii.gz", np.zeros((8, 8, 8), dtype=np.int16))
    manifest = tmp_path / "corpus.tsv"
    argv = ["--data-root", str(tmp_path), "--ixi", "ixi", "--labels", "labels"]
    assert main([*argv, "--out", str(manifest)]) == 0
    table = load_corpus(manifest, tmp_path)
    assert set(table["split"]) == {"train", "val", "test", "labels"}
    assert table.loc[table["split"] == "labels", "volume_id"].tolist() == ["labels_seg_01"]
    victim = tmp_path / "ixi" / "t1" / "IXI103-HH-1003-T1.nii.gz"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="IXI103-HH-1003") as err:
        load_corpus(manifest, tmp_path)
    assert "checksum mismatch" in str(err.value) and "\n" not in str(err.value)


def test_label_map_rows(tmp_path: Path) -> None:
    write_nifti(tmp_path / "maps" / "training_seg_02.nii.gz", np.ones((4, 4, 4), dtype=np.int16))
    rows = label_map_rows(tmp_path / "maps", tmp_path)
    assert rows["volume_id"].tolist() == ["labels_training_seg_02"]
    assert rows["path"].tolist() == ["maps/training_seg_02.nii.gz"]
    assert rows["use"].tolist() == [LABEL_MAP]
