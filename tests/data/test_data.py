"""motionqc.data.volumes: manifests, loading real and broken NIfTI files, preprocessing."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import forged_nifti, head_phantom, write_nifti

from motionqc.data.volumes import (
    ManifestError,
    VolumeError,
    file_sha256,
    load_manifest,
    load_mask,
    load_volume,
    preprocess,
)
from motionqc.profiles import PROFILES
from motionqc.qc_task import qc_class


def _manifest(tmp_path: Path, rows: list[dict], name: str = "m.tsv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def _row(vid: str, path: str, qc: str = "4", **extra: str) -> dict:
    return {
        "volume_id": vid,
        "dataset": "D",
        "site": "S1",
        "subject": vid,
        "path": path,
        "qc_score": qc,
        **extra,
    }


# --- errors: one line, naming the file --------------------------------------------------------


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    assert words in message


def test_corrupt_nifti_is_refused(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii.gz", head_phantom())
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(VolumeError) as exc:
        load_volume(truncated)
    _assert_one_line_naming(exc, truncated, "unreadable or truncated")

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    with pytest.raises(VolumeError) as exc:
        load_volume(garbage)
    _assert_one_line_naming(exc, garbage, "unreadable")


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    with pytest.raises(VolumeError) as exc:
        load_volume(empty)
    _assert_one_line_naming(exc, empty, "empty file")
    with pytest.raises(VolumeError) as exc:
        load_volume(tmp_path / "absent.nii")
    _assert_one_line_naming(exc, tmp_path / "absent.nii", "not found")


def test_4d_with_several_volumes_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "bold.nii.gz", np.stack([head_phantom()] * 3, axis=-1))
    with pytest.raises(VolumeError) as exc:
        load_volume(path)
    _assert_one_line_naming(exc, path, "expected a 3D volume")


def test_4d_with_one_volume_is_squeezed(tmp_path: Path) -> None:
    data = head_phantom()
    path = write_nifti(tmp_path / "one.nii", data[..., None])
    image = load_volume(path)
    assert image.shape == data.shape
    np.testing.assert_allclose(np.asarray(image.dataobj), data)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_volume_is_refused(tmp_path: Path, bad: float) -> None:
    data = head_phantom()
    data[3, 4, 5] = bad
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(VolumeError) as exc:
        load_volume(path)
    _assert_one_line_naming(exc, path, "NaN/Inf")


def test_all_zero_volume_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "zeros.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(VolumeError) as exc:
        load_volume(path)
    _assert_one_line_naming(exc, path, "all voxels are zero")


def test_volume_error_is_value_error() -> None:
    assert issubclass(VolumeError, ValueError) and issubclass(ManifestError, ValueError)


# --- orientation -------------------------------------------------------------------------------


def test_load_volume_returns_ras(tmp_path: Path) -> None:
    data = head_phantom()
    affine = np.diag([-2.0, 1.5, 1.0, 1.0])  # LAS storage
    affine[:3, 3] = [30, -20, -10]
    image = load_volume(write_nifti(tmp_path / "las.nii.gz", data, affine))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.asarray(image.dataobj), data[::-1], rtol=0, atol=0)
    # same world position of voxel content
    np.testing.assert_allclose(image.affine @ [data.shape[0] - 1, 0, 0, 1], affine @ [0, 0, 0, 1])


# --- manifests ---------------------------------------------------------------------------------


def test_manifest_with_missing_file_names_it(tmp_path: Path) -> None:
    present = write_nifti(tmp_path / "a.nii.gz", head_phantom())
    manifest = _manifest(tmp_path, [_row("a", str(present)), _row("b", "missing_b.nii.gz")])
    with pytest.raises(ManifestError) as exc:
        load_manifest(manifest)
    message = str(exc.value)
    assert "\n" not in message and "missing_b.nii.gz" in message and "file not found" in message
    assert str(manifest) in message


def test_manifest_skip_mode_keeps_the_rest(tmp_path: Path) -> None:
    present = write_nifti(tmp_path / "a.nii.gz", head_phantom())
    manifest = _manifest(tmp_path, [_row("a", "a.nii.gz"), _row("b", "missing_b.nii.gz", qc="")])
    with pytest.warns(UserWarning, match="missing_b"):
        df = load_manifest(manifest, on_error="skip")
    assert df["volume_id"].tolist() == ["a"]
    assert df.loc[0, "path"] == str(
        present.resolve()
    )  # relative paths resolve to the manifest's folder
    assert list(df.attrs["errors"]) == ["b"]


def test_manifest_validation(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", head_phantom())
    bad_cols = _manifest(tmp_path, [{"volume_id": "a", "path": "a.nii.gz"}], "cols.tsv")
    with pytest.raises(ManifestError, match="missing column"):
        load_manifest(bad_cols)
    bad_score = _manifest(tmp_path, [_row("a", "a.nii.gz", qc="7")], "score.tsv")
    with pytest.raises(ManifestError, match="qc_score '7'"):
        load_manifest(bad_score)
    dupes = _manifest(tmp_path, [_row("a", "a.nii.gz"), _row("a", "a.nii.gz")], "dupes.tsv")
    with pytest.raises(ManifestError, match="repeated"):
        load_manifest(dupes)
    ok = load_manifest(_manifest(tmp_path, [_row("a", "a.nii.gz", qc="")], "ok.tsv"))
    assert ok["qc_score"].isna().all() and str(ok["qc_score"].dtype) == "Int64"


def test_manifest_checksums(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "a.nii.gz", head_phantom())
    good = _manifest(tmp_path, [_row("a", "a.nii.gz", sha256=file_sha256(path))], "good.tsv")
    assert len(load_manifest(good, verify_checksums=True)) == 1
    bad = _manifest(tmp_path, [_row("a", "a.nii.gz", sha256="0" * 64)], "bad.tsv")
    with pytest.raises(ManifestError, match="checksum mismatch"):
        load_manifest(bad, verify_checksums=True)


def test_qc_class_mapping() -> None:
    assert [qc_class(s) for s in (1, 2, 3, 4)] == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="not one of"):
        qc_class(5)


# --- the real sample volumes -------------------------------------------------------------------


def test_sample_manifest_lists_real_verified_volumes(sample: pd.DataFrame) -> None:
    assert {"robex_atlas", "mni152_2009"} <= set(sample["volume_id"])
    assert sample["verified"].all()
    assert (sample.loc[sample["volume_id"] == "mni152_2009", "kind"] == "template").all()
    assert (sample.loc[sample["volume_id"] != "mni152_2009", "kind"] == "subject").all()
    for row in sample.itertuples():
        assert Path(row.path).is_file() and file_sha256(row.path) == row.sha256


def test_real_heads_load_as_ras_3d(sample: pd.DataFrame) -> None:
    for row in sample.itertuples():
        image = load_volume(row.path)  # the ROBEX head is stored 4D (…, 1) and LAS
        assert image.ndim == 3 and nib.aff2axcodes(image.affine) == ("R", "A", "S")
        data = np.asarray(image.dataobj)
        assert data.dtype == np.float32 and data.max() > 0
        if row.mask_path:
            mask = np.asarray(load_mask(row.mask_path).dataobj)
            assert mask.shape == data.shape
            assert 0.05 < mask.mean() < 0.5  # a brain occupies part of the head's field of view
            assert (
                data[mask > 0].mean() > data[mask == 0].mean()
            )  # the brain is brighter than the background


@pytest.mark.parametrize("profile", ["smoke", "sample"])
def test_preprocess_real_head_to_profile_grid(sample: pd.DataFrame, profile: str) -> None:
    p = PROFILES[profile]
    row = sample[sample["volume_id"] == "robex_atlas"].iloc[0]
    out = preprocess(row.path, p.spacing_mm, p.shape)
    assert tuple(out.shape) == (1, *p.shape)
    np.testing.assert_allclose(out.spacing, (p.spacing_mm,) * 3)
    assert torch.isclose(out.data.mean(), torch.tensor(1.0), atol=1e-4)  # divided by its mean
    assert out.orientation == ("R", "A", "S")


def test_preprocess_rejects_bad_arguments(phantom_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        preprocess(phantom_path, 2.0, (10, 10))
    with pytest.raises(ValueError, match="spacing"):
        preprocess(phantom_path, 0.0, (10, 10, 10))


@pytest.mark.parametrize("name", ["bomb_T1w.nii.gz", "bomb_T1w.nii"])
def test_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path: Path, name) -> None:
    import tracemalloc

    path = forged_nifti(tmp_path / name, (1150, 1150, 1150))
    assert path.stat().st_size < 1000
    tracemalloc.start()
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _assert_one_line_naming(err, path, "header claims")
    assert peak < 20 * 2**20  # nothing near the claimed 6 GB was allocated


def test_header_claiming_more_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    # 256 MB claimed, < 1 kB file
    path = forged_nifti(tmp_path / "short_T1w.nii.gz", (400, 400, 400))
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    _assert_one_line_naming(err, path, "more than the")
    ok = write_nifti(tmp_path / "ok_T1w.nii.gz", head_phantom((30, 30, 30)))
    assert load_volume(ok).shape == (30, 30, 30)  # a real compressed file is not refused


def test_preprocess_takes_an_integer_torchio_image() -> None:
    import torchio as tio

    phantom = head_phantom((30, 34, 28))
    data = (np.clip(phantom, 0, None) / phantom.max() * 3000).astype(np.int16)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ints = preprocess(
        tio.ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine), 4.0, (16, 16, 16)
    )
    floats = preprocess(
        tio.ScalarImage(tensor=torch.from_numpy(data.astype(np.float32))[None], affine=affine),
        4.0,
        (16, 16, 16),
    )
    assert ints.data.dtype == torch.float32
    assert torch.allclose(ints.data, floats.data)
