"""motionqc.app.derivatives: output checks, metadata, shards and resumable tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motionqc.app.derivatives import (
    GROUP_TABLE,
    ResultTable,
    check_output_dir,
    merge_shards,
    parse_shard,
    shard_items,
    shard_table,
    write_dataset_description,
)

COLUMNS = ["bids_name", "motion_mm", "motion_std", "status", "error"]


def test_output_inside_bids_is_refused(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    bids.mkdir()
    with pytest.raises(ValueError, match="must not be inside the BIDS dataset"):
        check_output_dir(bids, bids / "derivatives" / "motionqc")
    with pytest.raises(ValueError, match="must not be inside"):
        check_output_dir(bids, bids)
    assert check_output_dir(bids, tmp_path / "out").is_dir()


def test_dataset_description_is_a_derivative(tmp_path: Path) -> None:
    path = write_dataset_description(
        tmp_path, source=tmp_path / "bids", model={"checkpoint": "x.pt"}
    )
    meta = json.loads(path.read_text())
    assert meta["DatasetType"] == "derivative" and meta["BIDSVersion"]
    assert meta["GeneratedBy"][0]["Name"] == "motionqc" and meta["GeneratedBy"][0]["Model"] == {
        "checkpoint": "x.pt"
    }


def test_shards_are_disjoint_and_complete() -> None:
    items = [f"sub-{i:03d}_T1w" for i in range(23)]
    shuffled = items[::-1]
    shards = [shard_items(shuffled, i, 4) for i in range(4)]
    flat = [x for s in shards for x in s]
    assert sorted(flat) == items and len(flat) == len(set(flat))
    assert shard_items(items, 2, 4) == shards[2]  # independent of input order
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "x/2", "1-2", "-1/3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_result_table_survives_interruption_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "motion_T1w.tsv"
    table = ResultTable(path, COLUMNS)
    table.append(
        {"bids_name": "sub-01_T1w", "motion_mm": 0.51234567, "motion_std": 0.1, "status": "ok"}
    )
    table.append(
        {"bids_name": "sub-02_T1w", "status": "error", "error": "sub-02: NaN\tvoxels\nfound"}
    )
    with open(path, "a") as handle:  # a kill in the middle of a write
        handle.write("sub-03_T1w\t0.7")
    again = ResultTable(path, COLUMNS)
    assert again.done() == {"sub-01_T1w"}  # errors are retried on a re-run
    assert again.done(include_errors=True) == {"sub-01_T1w", "sub-02_T1w"}
    rows = again.read()
    assert (
        rows["motion_mm"].tolist() == ["0.512346", ""]
        and rows["error"][1] == "sub-02: NaN voxels found"
    )
    with pytest.raises(ValueError, match="existing table has columns"):
        ResultTable(path, ["bids_name", "other"])


def test_merge_shards(tmp_path: Path) -> None:
    for i in range(3):
        table = ResultTable(shard_table(tmp_path, i, 3), COLUMNS)
        for name in shard_items([f"sub-{k}_T1w" for k in range(7)], i, 3):
            table.append({"bids_name": name, "motion_mm": 1.0, "status": "ok"})
    retry = ResultTable(
        shard_table(tmp_path), COLUMNS
    )  # an unsharded re-run of one volume that failed
    retry.append({"bids_name": "sub-3_T1w", "status": "error", "error": "boom"})
    merged = merge_shards(tmp_path)
    assert merged["bids_name"].tolist() == [f"sub-{k}_T1w" for k in range(7)]
    assert (merged["status"] == "ok").all()  # the ok row wins over a later error
    assert (tmp_path / GROUP_TABLE).is_file()
    with pytest.raises(ValueError, match="no motion_T1w"):
        merge_shards(tmp_path / "empty")


def test_derivative_names_keep_the_entities_in_bids_order(tmp_path: Path) -> None:
    from motionqc.app.derivatives import derivative_name, derivative_path

    assert derivative_name("sub-01_T1w") == "sub-01_rec-motionqc_T1w"
    assert (
        derivative_name("sub-01_ses-a_acq-fast_run-2_T1w")
        == "sub-01_ses-a_acq-fast_rec-motionqc_run-2_T1w"
    )
    assert derivative_name("sub-01_rec-norm_T1w") == "sub-01_rec-normmotionqc_T1w"
    for not_bids in ("phantom_T1w", "sub-01_T2w", "sub-01_foo-1_T1w", "sub-01_acq-a_b_T1w"):
        assert derivative_name(not_bids) is None, not_bids
    assert derivative_path(tmp_path, "sub-01_ses-a_T1w") == (
        tmp_path / "sub-01" / "ses-a" / "anat" / "sub-01_ses-a_rec-motionqc_T1w.nii.gz"
    )
    assert derivative_path(tmp_path, "phantom_T1w") is None


def test_derivative_extras_are_written_once_and_kept(tmp_path: Path) -> None:
    from motionqc.app.derivatives import BIDSIGNORE, write_derivative_extras

    (tmp_path / ".bidsignore").write_text("mine/\n")
    write_derivative_extras(tmp_path)
    write_derivative_extras(tmp_path)
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines == ["mine/", *BIDSIGNORE]  # the user's line kept, ours added once
    (tmp_path / "README").write_text("our study\n")
    write_derivative_extras(tmp_path)
    assert (tmp_path / "README").read_text() == "our study\n"
