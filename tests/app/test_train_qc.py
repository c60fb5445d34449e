"""motionqc.app.train_qc and `motionqc train-qc`: ratings read as written, nothing lost unsaid.

A tiny BIDS tree (20 phantom heads at 4 mm) and a randomly initialised SFCN at the smoke
geometry: these tests check what is read, refused and reported, not the accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import head_phantom, write_nifti

from motionqc.app.cli import main
from motionqc.data.bids import manifest_from_bids
from motionqc.data.volumes import ManifestError
from motionqc.models.encoder import save_encoder
from motionqc.models.sfcn import SFCN

N = 20
RATINGS = [1, 3, 4, 2, 3, 4, 1, 3, 4, 2, 3, 4, 1, 3, 4, 2, 3, 4, 2, 4]  # every QC class often
HEADER = "bids_name\trating\tcomment\trater\ttimestamp"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A BIDS folder of N subjects (distinct phantoms) and a smoke encoder."""
    root = tmp_path_factory.mktemp("study")
    bids = root / "bids"
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-70.0, -90.0, -70.0]
    for i in range(N):
        write_nifti(bids / f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz", head_phantom(seed=i), affine)
    (bids / "dataset_description.json").write_text('{"Name": "s", "BIDSVersion": "1.9.0"}')
    torch.manual_seed(0)
    encoder = save_encoder(root / "encoder.pt", SFCN(), spacing_mm=4.0, shape=(40, 48, 40))
    return bids, encoder


def _export(path: Path, comments: dict[int, str] | None = None, names=None, ratings=None) -> Path:
    """A ratings TSV as the report's Export writes it: fields joined by tabs, nothing quoted."""
    comments = comments or {}
    names = names or [f"sub-{i:02d}_T1w" for i in range(N)]
    ratings = ratings or RATINGS
    lines = [HEADER] + [
        f"{n}\t{r}\t{comments.get(i, '')}\tA\t2026-12-01T10:00:00.000Z"
        for i, (n, r) in enumerate(zip(names, ratings, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_comments_with_quotes_keep_every_rating(study, tmp_path: Path) -> None:
    """#43 D4: a comment starting with `"` merged rows (20 exported ratings became 11)."""
    bids, _ = study
    for comments in (
        {2: '"ghosting', 11: 'see "ringing" above', 15: 'frontal"'},  # rows between merged
        {4: '"unclosed'},  # an unclosed quote made the file unreadable
        {0: '""', 1: "back\\slash", 19: "'single'"},
    ):
        ratings = _export(tmp_path / "study_ratings.tsv", comments)
        df = manifest_from_bids(bids, ratings)
        assert df["qc_score"].notna().sum() == N
        assert dict(zip(df["bids_name"], df["qc_score"], strict=True)) == {
            f"sub-{i:02d}_T1w": r for i, r in enumerate(RATINGS)
        }
    # a row with a field too many (a tab typed into an edited file) is refused, not merged
    broken = tmp_path / "broken.tsv"
    broken.write_text(f"{HEADER}\nsub-00_T1w\t4\tok\tA\tt\nsub-01_T1w\t3\ta\tb\tA\tt\n")
    with pytest.raises(ManifestError, match="line 3"):
        manifest_from_bids(bids, broken)


def test_invalid_and_unknown_ratings_are_reported(
    study, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D11: ratings `abc`/`NaN` and unknown or mistyped names were dropped as unrated."""
    bids, encoder = study
    for bad in ("abc", "NaN", "3.5", "0"):
        ratings = _export(tmp_path / "r.tsv", ratings=[*RATINGS[:5], bad, *RATINGS[6:]])
        with pytest.raises(ManifestError, match=rf"line 7: sub-05_T1w: rating {bad} is not"):
            manifest_from_bids(bids, ratings)
        rc = main(["train-qc", "--manifest", str(ratings), "--bids-dir", str(bids), str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and len(err.splitlines()) == 1 and "sub-05_T1w" in err
    names = [f"sub-{i:02d}_T1w" for i in range(N)]
    names[3], names[8] = "sub-3_T1w", "sub-08_T1W"  # mistyped
    ratings = _export(tmp_path / "typos.tsv", names=names)
    with pytest.warns(UserWarning, match="2 of 20 rated name"):
        table = manifest_from_bids(bids, ratings)
    assert table.attrs["unmatched"] == ["sub-08_T1W", "sub-3_T1w"]
    out = tmp_path / "qc"
    args = ["train-qc", "--manifest", str(ratings), "--bids-dir", str(bids), str(out)]
    assert main([*args, "--checkpoint", str(encoder), "--seeds", "1"]) == 0
    err = capsys.readouterr().err
    assert "2 of 20 rated name(s) are not in" in err and "sub-08_T1W, sub-3_T1w" in err


def test_train_qc_never_overwrites_its_ratings(
    study, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D12: `--manifest OUT/manifest.tsv --bids-dir` replaced the ratings by the manifest."""
    bids, encoder = study
    out = tmp_path / "qc"
    out.mkdir()
    for name in ("manifest.tsv", "splits.tsv", "qc_predictions.tsv"):
        ratings = _export(out / name)
        before = ratings.read_bytes()
        args = ["train-qc", "--manifest", str(ratings), "--bids-dir", str(bids), str(out)]
        assert main([*args, "--checkpoint", str(encoder)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "would be overwritten" in err, err
        assert ratings.read_bytes() == before
        ratings.unlink()


def _manifest(study, tmp_path: Path, split=None, missing=()) -> Path:
    bids, _ = study
    table = manifest_from_bids(bids, _export(tmp_path / "r.tsv"))
    for i in missing:
        table.loc[i, "path"] = str(tmp_path / f"gone_{i}.nii.gz")
    if split is not None:
        table["split"] = split
    path = tmp_path / "manifest.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def test_a_test_split_of_one_class_is_reported(
    study, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D13: a test split with one QC class reported balanced accuracy 0.5 without a word."""
    _, encoder = study
    # classes (RATINGS 1-2 -> 0, 3 -> 1, 4 -> 2); the test split: subjects 2, 5, 8 (all class 2)
    split = ["train"] * N
    for i in (2, 5, 8):
        split[i] = "test"
    for i in (0, 1, 3, 4):
        split[i] = "val"
    manifest = _manifest(study, tmp_path, split)
    out = tmp_path / "qc"
    args = ["train-qc", "--manifest", str(manifest), "--checkpoint", str(encoder), str(out)]
    assert main([*args, "--seeds", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "test split holds one QC class (2)" in err, err


def test_missing_rated_files_fail_the_run_unless_skipped(
    study, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D13: 6 of 20 files missing exited 0 with the fact only in errors.json."""
    _, encoder = study
    manifest = _manifest(study, tmp_path, missing=(1, 4, 7, 10, 13, 16))
    out = tmp_path / "qc"
    args = ["train-qc", "--manifest", str(manifest), "--checkpoint", str(encoder), str(out)]
    assert main([*args, "--seeds", "1"]) == 1
    err = capsys.readouterr().err
    assert "6 of 20 rated volume(s) cannot be used" in err and "--skip-missing" in err, err
    assert "gone_1.nii.gz" in err  # the first is named on the terminal, all in errors.json
    assert not (out / "qc_head.pt").exists()
    assert main([*args, "--seeds", "1", "--skip-missing"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "6 of 20" in err and (out / "qc_head.pt").is_file()
