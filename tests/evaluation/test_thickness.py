"""Tests for motionqc.evaluation.thickness: real ANTs runs on one sample head (coarse, few iterations),
the FreeSurfer stats reader and the manifest thickness reader. The motion statistics are tested
in test_thickness_stats.py.

The ANTs part is kept cheap (5 mm, 5 DiReCT iterations; about 10 s of CPU per run), plus two
1 mm phantoms of known thickness (about 25 s); the whole file runs in under two minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_nifti

from motionqc.evaluation.freesurfer import (
    AparcStats,
    freesurfer_mean_thickness,
    manifest_thickness,
    read_aparc_stats,
)
from motionqc.evaluation.thickness import ThicknessError, cortical_thickness, crop_box
from motionqc.evaluation.thickness_batch import thickness_batch, thickness_cache_key

FAST = {"spacing_mm": 5.0, "iterations": 5}


def _shells(
    gm_mm: float, wm_radius_mm: float = 12.0, csf_mm: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """A 1 mm phantom of known cortical thickness: a WM ball, a GM shell ``gm_mm`` thick, CSF.

    T1w-like intensities (CSF 30 < GM 70 < WM 110) with mild noise; the mask covers the CSF shell.
    """
    n = int(2 * (wm_radius_mm + gm_mm + csf_mm + 4))
    c = np.arange(n) - (n - 1) / 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    image = np.where(r < wm_radius_mm, 110.0, np.where(r < wm_radius_mm + gm_mm, 70.0, 30.0))
    image = image + np.random.default_rng(0).normal(0, 2.0, image.shape)
    return image.astype(np.float32), (r < wm_radius_mm + gm_mm + csf_mm).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Real ANTs runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def robex(sample) -> pd.Series:
    row = sample.set_index("volume_id").loc["robex_atlas"]
    return row


@pytest.fixture(scope="module")
def empty_mask(robex, tmp_path_factory) -> Path:
    import nibabel as nib

    ref = nib.load(robex.mask_path)
    zeros = np.zeros(ref.shape, dtype=np.uint8)
    return write_nifti(tmp_path_factory.mktemp("bad") / "empty_mask.nii.gz", zeros, ref.affine)


@pytest.fixture(scope="module")
def batch(robex, empty_mask) -> pd.DataFrame:
    """Two identical runs of the real head in two worker processes, plus one bad item."""
    items = [
        ("robex_a", robex.path, robex.mask_path),
        {"volume": "broken", "image": robex.path, "mask": empty_mask},
        ("robex_b", robex.path, robex.mask_path),
    ]
    return thickness_batch(items, n_jobs=2, progress=False, **FAST)


def test_batch_is_deterministic_across_processes(batch):
    ok = batch.set_index("volume")
    assert ok.loc["robex_a", "status"] == "ok" and ok.loc["robex_b", "status"] == "ok"
    assert ok.loc["robex_a", "thickness_mm"] == ok.loc["robex_b", "thickness_mm"]
    assert ok.loc["robex_a", "gm_volume_ml"] == ok.loc["robex_b", "gm_volume_ml"]


def test_thickness_of_a_phantom_of_known_thickness():
    """DiReCT on concentric shells measures the GM shell's width: a fact of the geometry.

    On a 1 mm grid each measure may fall short by up to one voxel (partial volume at the two GM
    boundaries), while the difference between a 4 mm and a 2 mm shell is the 2 mm between them.
    """
    measured = {}
    for gm_mm in (2.0, 4.0):
        image, mask = _shells(gm_mm)
        result = cortical_thickness(
            image, mask, spacing_mm=None, voxel_size_mm=1.0, iterations=15, name=f"shell{gm_mm:g}"
        )
        measured[gm_mm] = result.thickness_mm
        assert gm_mm - 1.0 <= result.thickness_mm <= gm_mm + 0.1, (gm_mm, result.thickness_mm)
    assert measured[4.0] - measured[2.0] == pytest.approx(2.0, abs=0.25), measured


def test_cropping_to_the_mask_keeps_the_thickness_and_drops_the_background():
    """A phantom padded with 30 voxels of background, cropped with a 4 mm margin, is the
    unpadded phantom (4 voxels beyond its mask) again: the same thickness to float precision."""
    image, mask = _shells(2.0)
    padded_image = np.pad(image, 30, constant_values=0.0)
    padded_mask = np.pad(mask, 30, constant_values=0)
    settings = {"spacing_mm": None, "voxel_size_mm": 1.0, "iterations": 5}
    plain = cortical_thickness(image, mask, crop_margin_mm=None, name="plain", **settings)
    cropped = cortical_thickness(
        padded_image, padded_mask, crop_margin_mm=4.0, name="padded", **settings
    )
    assert cropped.n_gm_voxels == plain.n_gm_voxels
    assert cropped.thickness_mm == pytest.approx(plain.thickness_mm, rel=1e-4)
    with pytest.raises(ValueError, match="crop_margin_mm"):
        cortical_thickness(image, mask, crop_margin_mm=-1.0, **settings)


def test_crop_box_widens_by_whole_voxels_per_axis_and_stops_at_the_grid():
    brain = np.zeros((20, 30, 40), bool)
    brain[0:3, 10:12, 30:40] = True  # touches the low edge of x and the high edge of z
    box = crop_box(brain, (1.0, 2.0, 0.5), 3.0)
    # x: 3 voxels of 1 mm, clipped at 0; y: ceil(3/2) = 2 voxels; z: 6 voxels of 0.5 mm, clipped at 40
    assert box == (slice(0, 6), slice(8, 14), slice(24, 40))
    assert brain[box].sum() == brain.sum()
    assert crop_box(brain, (1.0, 1.0, 1.0), 0.0) == (slice(0, 3), slice(10, 12), slice(30, 40))


def test_cache_key_follows_voxels_mask_and_settings_not_the_name(tmp_path, monkeypatch):
    image, mask = _shells(2.0)
    settings = {"spacing_mm": None, "voxel_size_mm": 1.0, "iterations": 5, "seed": 0}
    a = write_nifti(tmp_path / "a.nii.gz", image, np.eye(4))
    b = write_nifti(tmp_path / "renamed.nii.gz", image, np.eye(4))
    m = write_nifti(tmp_path / "mask.nii.gz", mask, np.eye(4))
    key = thickness_cache_key(a, m, settings)
    assert len(key) == 64 and key == thickness_cache_key(b, m, settings)  # a renamed copy
    assert key == thickness_cache_key(
        image, mask, settings
    )  # array with voxel_size_mm 1 = the file
    moved = image.copy()
    moved[5, 5, 5] += 1.0
    other_mask = mask.copy()
    other_mask[0, 0, 0] = 1
    different = {
        thickness_cache_key(moved, mask, settings),
        thickness_cache_key(image, other_mask, settings),
        thickness_cache_key(image, mask, settings | {"iterations": 6}),
        thickness_cache_key(image, mask, settings | {"seed": 1}),
        thickness_cache_key(image, mask, settings | {"voxel_size_mm": 2.0}),
    }
    assert key not in different and len(different) == 5
    # a setting passed at its default value is the same setting as one left out
    assert thickness_cache_key(image, mask, settings | {"crop_margin_mm": 10.0}) == key
    assert thickness_cache_key(image, mask, settings | {"crop_margin_mm": 5.0}) != key
    assert thickness_cache_key(image, mask * 7, settings) == key  # only non-zero voxels matter
    import motionqc.evaluation.thickness as thickness_module

    monkeypatch.setattr(thickness_module, "PIPELINE_VERSION", thickness_module.PIPELINE_VERSION + 1)
    assert thickness_cache_key(image, mask, settings) != key  # results of older code are not read


def test_batch_cache_reads_back_ok_rows_and_recomputes_failures(robex, empty_mask, tmp_path):
    items = [
        ("robex", robex.path, robex.mask_path),
        {"volume": "broken", "image": robex.path, "mask": empty_mask},
    ]
    first = thickness_batch(items, n_jobs=1, progress=False, cache_dir=tmp_path, **FAST)
    assert list(first["cached"]) == [False, False]
    assert len(list(tmp_path.glob("*.json"))) == 1  # the failure is not cached
    renamed = [("robex_again", robex.path, robex.mask_path), items[1]]
    second = thickness_batch(renamed, n_jobs=1, progress=False, cache_dir=tmp_path, **FAST)
    assert list(second["cached"]) == [True, False]
    assert second.loc[0, "thickness_mm"] == first.loc[0, "thickness_mm"]
    assert second.loc[0, "gm_volume_ml"] == first.loc[0, "gm_volume_ml"]
    assert second.loc[1, "status"] == "failed" and "mask is empty" in second.loc[1, "error"]
    missing = [("gone", tmp_path / "missing.nii.gz", robex.mask_path), *renamed[:1]]
    with_missing = thickness_batch(missing, n_jobs=1, progress=False, cache_dir=tmp_path, **FAST)
    assert with_missing["cached"].dtype == bool and list(with_missing["cached"]) == [False, True]
    assert with_missing.loc[0, "status"] == "failed" and "gone" in with_missing.loc[0, "error"]
    (cached,) = tmp_path.glob("*.json")
    cached.write_text("{not json")  # a damaged entry is recomputed, not trusted
    third = thickness_batch(items[:1], n_jobs=1, progress=False, cache_dir=tmp_path, **FAST)
    assert not third.loc[0, "cached"]
    assert third.loc[0, "thickness_mm"] == first.loc[0, "thickness_mm"]


def test_real_head_gives_a_thickness_and_an_adult_grey_matter_volume(batch):
    row = batch.set_index("volume").loc["robex_a"]
    assert row.status == "ok" and row.thickness_mm > 0
    assert 300 < row.gm_volume_ml < 900  # an adult brain's cortical GM, coarse grid
    assert row.seconds > 0


def test_batch_reports_bad_item_and_keeps_the_others(batch):
    assert list(batch.columns) == [
        "volume",
        "thickness_mm",
        "gm_volume_ml",
        "seconds",
        "status",
        "error",
        "cached",
    ]
    assert not batch["cached"].any()  # no cache_dir: everything computed
    assert list(batch["volume"]) == ["robex_a", "broken", "robex_b"]  # input order
    bad = batch.set_index("volume").loc["broken"]
    assert bad.status == "failed"
    assert np.isnan(bad.thickness_mm)
    assert "broken" in bad.error and "mask is empty" in bad.error
    assert "\n" not in bad.error
    assert (batch["status"] == "ok").sum() == 2


# --------------------------------------------------------------------------------------------
# Bad inputs (fail before or inside ANTs, quickly)
# --------------------------------------------------------------------------------------------


def test_ants_leaves_no_files_in_the_temporary_directory(robex, tmp_path, monkeypatch):
    # ants.atropos writes its three posterior images to tempfile.mktemp() names and never
    # deletes them; a run must leave the temporary directory as it found it.
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = cortical_thickness(robex.path, robex.mask_path, name="robex", **FAST)
    assert result.thickness_mm > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert tempfile.tempdir == str(tmp_path)  # restored after the run


def test_empty_mask_raises_one_line_error_naming_the_volume(robex, empty_mask):
    with pytest.raises(ThicknessError) as info:
        cortical_thickness(robex.path, empty_mask, **FAST)
    message = str(info.value)
    assert "robex_atlas_T1w.nii.gz" in message and "mask is empty" in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_shape_mismatch_raises():
    image = np.ones((10, 10, 10), np.float32)
    with pytest.raises(ThicknessError, match=r"^vol7: mask shape \(9, 10, 10\) differs"):
        cortical_thickness(image, np.ones((9, 10, 10)), name="vol7")


def test_constant_or_nan_image_raises():
    mask = np.ones((6, 6, 6), np.uint8)
    with pytest.raises(ThicknessError, match="constant inside the mask"):
        cortical_thickness(np.full((6, 6, 6), 3.0), mask, name="flat")
    bad = np.ones((6, 6, 6), np.float32)
    bad[2, 2, 2] = np.nan
    with pytest.raises(ThicknessError, match="^nan_vol: .*NaN"):
        cortical_thickness(bad, mask, name="nan_vol")


def test_failed_segmentation_raises_thickness_error():
    # Two intensity plateaus cannot be split into three tissue classes.
    image = np.full((12, 12, 12), 10.0, np.float32)
    image[3:9, 3:9, 3:9] = 50.0
    image[5:7, 5:7, 5:7] = 51.0
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[2:10, 2:10, 2:10] = 1
    with pytest.raises(ThicknessError, match="^plateaus: segmentation failed"):
        cortical_thickness(image, mask, spacing_mm=None, iterations=3, name="plateaus")


def test_settings_are_checked():
    image = np.ones((6, 6, 6), np.float32)
    with pytest.raises(ValueError, match="spacing_mm"):
        cortical_thickness(image, image, spacing_mm=0)
    with pytest.raises(ValueError, match="iterations"):
        cortical_thickness(image, image, iterations=0)
    with pytest.raises(ValueError, match="n_jobs"):
        thickness_batch([("a", image, image)], n_jobs=0)
    with pytest.raises(ValueError, match="unique"):
        thickness_batch([("a", image, image), ("a", image, image)], progress=False)


# --------------------------------------------------------------------------------------------
# FreeSurfer aparc.stats
# --------------------------------------------------------------------------------------------

_REGIONS = [
    # StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd
    ("bankssts", 1450, 985, 2330, 2.530, 0.456, 0.112, 0.026, 14, 1.5),
    ("caudalanteriorcingulate", 1012, 690, 1955, 2.641, 0.633, 0.133, 0.021, 13, 0.9),
    ("precentral", 7620, 5110, 14120, 2.612, 0.531, 0.122, 0.027, 84, 8.1),
    ("superiorfrontal", 11020, 7380, 21510, 2.771, 0.539, 0.128, 0.025, 125, 11.2),
    ("insula", 3360, 2210, 7100, 3.020, 0.681, 0.103, 0.022, 32, 3.0),
]


def _write_aparc(path: Path, hemi: str, shift: float = 0.0, measure: bool = True) -> Path:
    n_vert = sum(r[1] for r in _REGIONS)
    weighted = sum(r[1] * (r[4] + shift) for r in _REGIONS) / n_vert
    lines = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ",
        "# ",
        "# CreationTime 2024/03/11-10:21:07-GMT",
        "# generating_program mris_anatomical_stats",
        f"# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/{hemi}.cortex.label "
        f"-f ../stats/{hemi}.aparc.stats -b -a ../label/{hemi}.aparc.annot "
        f"-c ../label/aparc.annot.ctab sub-01 {hemi} white ",
        "# sysname  Linux",
        "# ",
        "# SUBJECTS_DIR /data/freesurfer",
        "# anatomy_type surface",
        "# subjectname sub-01",
        f"# hemi {hemi}",
        f"# AnnotationFile ../label/{hemi}.aparc.annot",
        f"# Measure Cortex, NumVert, Number of Vertices, {n_vert}, unitless",
        "# Measure Cortex, WhiteSurfArea, White Surface Total Area, 16375, mm^2",
    ]
    if measure:
        lines.append(f"# Measure Cortex, MeanThickness, Mean Thickness, {weighted:.5f}, mm")
    lines += [
        "# NTableCols 10",
        "# TableCol  1 ColHeader StructName",
        "# TableCol  1 FieldName Structure Name",
        "# TableCol  5 ColHeader ThickAvg",
        "# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv "
        "FoldInd CurvInd",
    ]
    for name, nv, sa, gv, th, ts, mc, gc, fi, ci in _REGIONS:
        lines.append(
            f"{name:<40} {nv:5d} {sa:6d} {gv:6d} {th + shift:5.3f} {ts:5.3f} {mc:9.3f} "
            f"{gc:9.3f} {fi:8d} {ci:6.1f}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_aparc_stats(tmp_path):
    stats = read_aparc_stats(_write_aparc(tmp_path / "lh.aparc.stats", "lh"))
    assert isinstance(stats, AparcStats)
    assert stats.hemisphere == "lh" and stats.from_measure
    assert list(stats.regions["StructName"]) == [r[0] for r in _REGIONS]
    assert stats.regions["ThickAvg"].tolist() == pytest.approx([r[4] for r in _REGIONS])
    assert stats.regions["NumVert"].dtype.kind == "i"
    assert stats.n_vertices == sum(r[1] for r in _REGIONS)
    expected = sum(r[1] * r[4] for r in _REGIONS) / stats.n_vertices
    assert stats.mean_thickness_mm == pytest.approx(expected, abs=1e-5)


def test_aparc_without_measure_line_uses_vertex_weighted_mean(tmp_path):
    stats = read_aparc_stats(_write_aparc(tmp_path / "rh.aparc.stats", "rh", measure=False))
    assert not stats.from_measure and stats.hemisphere == "rh"
    expected = sum(r[1] * r[4] for r in _REGIONS) / stats.n_vertices
    assert stats.mean_thickness_mm == pytest.approx(expected)


def test_freesurfer_mean_thickness_weights_by_vertices(tmp_path):
    lh = _write_aparc(tmp_path / "lh.aparc.stats", "lh")
    rh = _write_aparc(tmp_path / "rh.aparc.stats", "rh", shift=0.2)
    left, right = read_aparc_stats(lh), read_aparc_stats(rh)
    both = freesurfer_mean_thickness(lh, rh)
    assert both == pytest.approx((left.mean_thickness_mm + right.mean_thickness_mm) / 2)
    # Unequal vertex counts: the bigger hemisphere weighs more.
    small = AparcStats("x", "rh", right.regions, right.mean_thickness_mm, True, 1000)
    weighted = freesurfer_mean_thickness(left, small)
    n = left.n_vertices
    assert weighted == pytest.approx(
        (left.mean_thickness_mm * n + small.mean_thickness_mm * 1000) / (n + 1000)
    )


def test_aparc_reader_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_aparc_stats(tmp_path / "missing.stats")
    no_header = tmp_path / "lh.bad.stats"
    no_header.write_text("# hemi lh\n# Measure Cortex, MeanThickness, Mean Thickness, 2.5, mm\n")
    with pytest.raises(ValueError, match="ColHeaders"):
        read_aparc_stats(no_header)
    ragged = _write_aparc(tmp_path / "lh.aparc.stats", "lh")
    ragged.write_text(ragged.read_text() + "extra 1 2\n")
    with pytest.raises(ValueError, match=r"line \d+: 3 fields, expected 10"):
        read_aparc_stats(ragged)


# --------------------------------------------------------------------------------------------
# Thickness values a manifest already holds
# --------------------------------------------------------------------------------------------


def test_manifest_thickness_column_stats_and_freesurfer_dir(tmp_path):
    for folder in ("s2", "fs/sub-03/stats"):
        (tmp_path / folder).mkdir(parents=True)
    lh = _write_aparc(tmp_path / "s2" / "lh.aparc.stats", "lh")
    rh = _write_aparc(tmp_path / "s2" / "rh.aparc.stats", "rh", shift=0.2)
    subject_dir = tmp_path / "fs" / "sub-03"
    _write_aparc(subject_dir / "stats" / "lh.aparc.stats", "lh", shift=0.1)
    _write_aparc(subject_dir / "stats" / "rh.aparc.stats", "rh", shift=0.1)
    manifest = pd.DataFrame(
        {
            "volume_id": ["v1", "v2", "v3", "v4", "v5", "v6"],
            "thickness": [2.41, None, None, None, None, -1.0],
            "lh_aparc_stats": [None, "s2/lh.aparc.stats", None, "s2/missing.stats", None, None],
            "rh_aparc_stats": [None, "s2/rh.aparc.stats", None, "s2/rh.aparc.stats", None, None],
            "freesurfer_dir": [None, None, str(subject_dir), None, None, None],
            "age": [20, 21, 22, 23, 24, 25],
        }
    )
    out = manifest_thickness(manifest, base_dir=tmp_path)
    assert list(out["volume_id"]) == list(manifest["volume_id"]) and "age" in out.columns
    assert out["thickness_source"].tolist() == [
        "column",
        "aparc_stats",
        "freesurfer_dir",
        "",
        "",
        "",
    ]
    assert out.loc[0, "thickness"] == pytest.approx(2.41)
    assert out.loc[1, "thickness"] == pytest.approx(freesurfer_mean_thickness(lh, rh))
    base = read_aparc_stats(lh).mean_thickness_mm
    assert out.loc[2, "thickness"] == pytest.approx(base + 0.1, abs=1e-4)
    assert out.loc[:2, "thickness_error"].eq("").all()
    assert out.loc[3:, "thickness"].isna().all()
    assert (
        out.loc[3, "thickness_error"].startswith("v4: ")
        and "not found" in out.loc[3, "thickness_error"]
    )
    assert out.loc[4, "thickness_error"] == "v5: no thickness value and no FreeSurfer stats"
    assert "not a positive number" in out.loc[5, "thickness_error"]
    assert "thickness_source" not in manifest.columns  # the input is not modified


def test_manifest_thickness_needs_a_source():
    with pytest.raises(ValueError, match="needs a 'thickness' column"):
        manifest_thickness(pd.DataFrame({"volume_id": ["a"]}))
