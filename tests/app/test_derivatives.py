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


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_score_never_writes_over_a_dataset_that_is_not_a_motionqc_derivative(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D6: the study's parent as output replaced its dataset_description.json; input and
    output swapped wrote into the raw dataset; `/` was accepted as the output folder."""
    from conftest import head_phantom, write_nifti

    from motionqc.app.cli import main

    parent = tmp_path / "data"
    study = parent / "study"
    write_nifti(study / "sub-01/anat/sub-01_T1w.nii.gz", head_phantom((8, 9, 10)))
    (study / "dataset_description.json").write_text('{"Name": "study", "BIDSVersion": "1.9.0"}')
    (parent / "dataset_description.json").write_text('{"Name": "all my studies"}')
    derived = tmp_path / "derived"  # a motionqc derivative of another study
    derived.mkdir()
    write_dataset_description(derived, source=tmp_path / "other", model={"sha256": "0" * 64})
    write_nifti(derived / "sub-01/anat/sub-01_T1w.nii.gz", head_phantom((8, 9, 10)))
    checkpoint = str(tmp_path / "absent.pt")  # the folders are checked before the encoder
    cases = [
        (study, parent, "not a motionqc derivative"),  # the study's parent
        (derived, study, "not a motionqc derivative"),  # input and output swapped
        (study, Path("/"), "the root folder"),
    ]
    for bids, out, message in cases:
        before = _files(out) if out != Path("/") else None
        rc = main(["score", str(bids), str(out), "participant", "--checkpoint", checkpoint])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, (out, err)
        if before is not None:
            assert _files(out) == before  # nothing written, nothing replaced
    # a folder with the study inside it, even without a description, is refused
    (parent / "dataset_description.json").unlink()
    with pytest.raises(ValueError, match="holds the BIDS dataset"):
        check_output_dir(study, parent)
    # the raw dataset, even without its description, is refused as an output
    (study / "dataset_description.json").unlink()
    with pytest.raises(ValueError, match="holds T1w images"):
        check_output_dir(derived, study)
    # a motionqc derivative and a new folder are accepted
    assert check_output_dir(tmp_path / "other", derived) == derived.resolve()
    assert check_output_dir(study, tmp_path / "new").is_dir()
