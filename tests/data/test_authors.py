"""motionqc.data.authors: the poster's datasets as manifests, and resolving them against a data root."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from motionqc.data.authors import (
    DATA_ROOT_ENV,
    MANIFEST_COLUMNS,
    build_paper_manifest,
    manifest_base,
    read_paper_manifest,
    resolve_paper_manifest,
    role_split_table,
    write_paper_manifests,
)
from motionqc.data.volumes import REQUIRED_COLUMNS, ManifestError, file_sha256, load_manifest
from motionqc.evaluation.poster import POSTER_COUNTS, POSTER_DATA_SPLIT, authors_table
from motionqc.paths import manifest_dir


@pytest.fixture(scope="module")
def ampscz() -> pd.DataFrame:
    return read_paper_manifest("ampscz")


@pytest.fixture(scope="module")
def hcpep() -> pd.DataFrame:
    return read_paper_manifest("hcpep")


def test_committed_manifests_are_what_the_builder_writes(tmp_path: Path) -> None:
    written = write_paper_manifests(tmp_path)
    for name, path in written.items():
        assert path.read_bytes() == (manifest_dir() / f"{name}.tsv").read_bytes(), name
        header = path.read_text().splitlines()[0].split("\t")
        assert header == list(MANIFEST_COLUMNS)
        assert set(REQUIRED_COLUMNS) <= set(header)


def test_one_row_per_authors_row(ampscz: pd.DataFrame, hcpep: pd.DataFrame) -> None:
    for name, df in (("ampscz", ampscz), ("hcpep", hcpep)):
        table = authors_table(name)
        assert len(df) == len(table)
        assert df["path"].tolist() == table["clinica_path"].tolist()
        assert df["role"].tolist() == table["role"].tolist()
        assert df["split"].tolist() == table["split"].tolist()
        assert df["volume_id"].is_unique
        assert (df["sha256"] == "").all() and df["licence"].str.startswith("restricted").all()
    assert len(ampscz) == 940  # 319 + 196 + 182 + 243 (the authors' README says 986)
    # HCP-EP lists one volume twice (ratings 3.5 and 4): both rows kept, 142 distinct files
    assert hcpep["path"].nunique() == 142
    assert hcpep.loc[hcpep["volume_id"] == "4097_1_dup1", "qc_rating"].item() == "4"


def test_manifests_match_the_poster_counts(ampscz: pd.DataFrame, hcpep: pd.DataFrame) -> None:
    roles = ampscz["role"].value_counts()
    assert roles["synthetic_pool"] == POSTER_COUNTS["synthetic_pool_ampscz"] == 319
    assert len(hcpep) == (hcpep["role"] == "synthetic_pool").sum()
    assert len(hcpep) == POSTER_COUNTS["synthetic_pool_hcpep"] == 143
    assert roles["transfer"] == 196 and roles["transfer_test_added"] == 182
    assert roles["transfer"] + roles["transfer_test_added"] == POSTER_COUNTS["transfer_ampscz"]
    assert roles["extra_test"] == 243
    pool_sites = ampscz.loc[ampscz["role"] == "synthetic_pool", "site"].nunique()
    transfer = ampscz["role"].isin(["transfer", "transfer_test_added"])
    assert pool_sites == POSTER_COUNTS["synthetic_sites"] == 26
    assert ampscz.loc[transfer, "site"].nunique() == POSTER_COUNTS["transfer_sites"] == 7
    assert (ampscz.loc[transfer, "site_role"] == "finetune").all()
    assert (ampscz.loc[~transfer, "site_role"] == "pretrain").all()


def test_class_counts_per_split(ampscz: pd.DataFrame, hcpep: pd.DataFrame) -> None:
    table = role_split_table(pd.concat([ampscz, hcpep], ignore_index=True))
    cols = ["volumes", "sites", "1/2", "3", "4", "unrated"]
    expected = {
        ("AMPSCZ", "synthetic_pool", "train"): [254, 26, 0, 20, 233, 1],  # the one rating 5
        ("AMPSCZ", "synthetic_pool", "val"): [33, 14, 0, 2, 31, 0],
        ("AMPSCZ", "synthetic_pool", "test"): [32, 13, 0, 1, 31, 0],
        ("AMPSCZ", "transfer", "train"): [115, 7, 7, 38, 70, 0],
        ("AMPSCZ", "transfer", "val"): [39, 7, 1, 12, 26, 0],
        ("AMPSCZ", "transfer", "test"): [42, 7, 0, 18, 24, 0],
        ("AMPSCZ", "transfer_test_added", "test"): [182, 7, 9, 72, 101, 0],
        ("AMPSCZ", "extra_test", "test"): [243, 24, 12, 178, 53, 0],
        ("HCPEP", "synthetic_pool", "train"): [115, 3, 0, 13, 99, 3],  # 3.5, 3.5, 3.5 ratings
        ("HCPEP", "synthetic_pool", "val"): [14, 3, 0, 0, 13, 1],  # a 2.5 rating
        ("HCPEP", "synthetic_pool", "test"): [14, 3, 0, 0, 14, 0],
    }
    assert table.index.tolist() == list(expected)
    for key, values in expected.items():
        assert table.loc[key, cols].tolist() == values, key
    # the poster's "Data split for QC task": Train = train, Test = val, Validation = the
    # 224-volume test set (transfer test 42 + 182 added)
    t = table.xs("AMPSCZ", level="dataset")[["1/2", "3", "4"]]
    assert t.loc[("transfer", "train")].tolist() == POSTER_DATA_SPLIT.loc["Train"].tolist()
    assert t.loc[("transfer", "val")].tolist() == POSTER_DATA_SPLIT.loc["Test"].tolist()
    test = t.loc[("transfer", "test")] + t.loc[("transfer_test_added", "test")]
    assert test.tolist() == POSTER_DATA_SPLIT.loc["Validation"].tolist()


def test_qc_scores_outside_the_scale_are_empty_with_the_rating_kept() -> None:
    df = build_paper_manifest("hcpep")
    off = df[df["qc_score"].isna()]
    assert sorted(off["qc_rating"]) == ["2.5", "3.5", "3.5", "3.5"]
    a = build_paper_manifest("ampscz")
    assert a.loc[a["qc_score"].isna(), "qc_rating"].tolist() == ["5"]
    with pytest.raises(ValueError, match="unknown dataset"):
        build_paper_manifest("ukb")


def _fake_root(root: Path, manifest: pd.DataFrame, n_present: int) -> None:
    for rel in manifest["path"].iloc[:n_present]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_missing_files_are_reported_in_one_summary(tmp_path: Path, hcpep: pd.DataFrame) -> None:
    tsv = manifest_dir() / "hcpep.tsv"
    _fake_root(tmp_path, hcpep, 10)
    with pytest.raises(ManifestError) as info:
        resolve_paper_manifest(tsv, root=tmp_path)
    message = str(info.value)
    # 143 rows, 10 present files (4097_1 appears twice, beyond the first 10 rows)
    assert "133 of 143 files missing" in message and "\n" not in message
    assert message.count("HCPEP-Preproc/") == 5 and message.endswith(", …)")
    with pytest.warns(UserWarning, match="133 of 143 files missing") as record:
        kept = resolve_paper_manifest(tsv, root=tmp_path, on_missing="skip")
    assert len(record) == 1
    assert kept["volume_id"].tolist() == hcpep["volume_id"].iloc[:10].tolist()
    assert all(Path(p).is_file() and Path(p).is_absolute() for p in kept["path"])
    assert len(kept.attrs["missing"]) == 133 and kept.attrs["missing_summary"] == message
    assert kept["qc_score"].dtype == "Int64"
    with pytest.raises(ValueError, match="on_missing"):
        resolve_paper_manifest(tsv, root=tmp_path, on_missing="ignore")


def test_root_from_the_environment(
    tmp_path: Path, hcpep: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    tsv = manifest_dir() / "hcpep.tsv"
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(ManifestError, match=DATA_ROOT_ENV):
        resolve_paper_manifest(tsv)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(ManifestError, match="not a folder"):
        resolve_paper_manifest(tsv)
    _fake_root(tmp_path, hcpep, len(hcpep))
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    full = resolve_paper_manifest(tsv)
    assert len(full) == 143 and full.attrs["missing"] == [] and full.attrs["missing_summary"] == ""
    assert full["path"].iloc[0] == str(tmp_path.resolve() / hcpep["path"].iloc[0])


def test_manifest_base_names_the_folder_relative_paths_resolve_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data_root, else MOTIONQC_DATA_ROOT, else the manifest's own folder."""
    beside, env_root, given = (tmp_path / n for n in ("beside", "env", "given"))
    tsv = beside / "m.tsv"
    for folder in (beside, env_root, given):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "a.nii.gz").write_bytes(b"")
    pd.DataFrame(
        [
            {
                "volume_id": "a",
                "dataset": "d",
                "site": "s",
                "subject": "p",
                "path": "sub/a.nii.gz",
                "qc_score": 4,
            }
        ]
    ).to_csv(tsv, sep="\t", index=False)

    def resolved(root: Path | None) -> Path:
        table = load_manifest(tsv, base_dir=manifest_base(root), check_files=False)
        return Path(table["path"].iloc[0]).resolve()

    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert manifest_base() is None and resolved(None) == beside.resolve() / "sub" / "a.nii.gz"
    monkeypatch.setenv(DATA_ROOT_ENV, str(env_root))
    assert resolved(None) == env_root.resolve() / "sub" / "a.nii.gz"
    assert resolved(given) == given.resolve() / "sub" / "a.nii.gz"


def test_checksums_checked_only_where_filled(tmp_path: Path, hcpep: pd.DataFrame) -> None:
    _fake_root(tmp_path, hcpep, 3)
    rows = hcpep.iloc[:3].copy()
    rows["qc_score"] = rows["qc_score"].astype("string").fillna("")
    rows.loc[rows.index[0], "sha256"] = file_sha256(tmp_path / rows["path"].iloc[0])
    tsv = tmp_path / "m.tsv"
    rows.to_csv(tsv, sep="\t", index=False)
    assert len(resolve_paper_manifest(tsv, root=tmp_path, verify_checksums=True)) == 3
    rows.loc[rows.index[1], "sha256"] = "0" * 64
    rows.to_csv(tsv, sep="\t", index=False)
    with pytest.raises(ManifestError, match="checksum mismatch"):
        resolve_paper_manifest(tsv, root=tmp_path, verify_checksums=True)
