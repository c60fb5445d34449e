"""motionqc.data.volumes and .nifti_guard: what a file may make motionqc inflate or allocate (#43).

Every odd file is built here with nibabel, gzip or zlib directly: a gzip bomb hidden in a NIfTI
extension (D1), absurd voxel sizes (D2), images whose errors used to dump the image object (D14),
files that are not files (D16), and images that are not T1w scans (D17).
"""

from __future__ import annotations

import gzip
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torchio as tio
from conftest import head_phantom, write_nifti

from motionqc.data.volumes import (
    ManifestError,
    VolumeError,
    load_manifest,
    load_mask,
    load_volume,
    preprocess,
)

MAX_HEADER_BYTES = 16 * 2**20  # motionqc.data.nifti_guard's caps (literals: the tests predate them)
MAX_FIELD_OF_VIEW_MM = 400.0


def bomb_nifti(path: Path, inflated_mib: int, esize: int = 7, vox_offset: int = 368) -> Path:
    """A .nii.gz claiming 48³ float32 whose extension (size ``esize``) hides zeros that inflate
    to ``inflated_mib`` MiB: nibabel reads an extension of fewer than 8 bytes to the stream's end."""
    header = nib.Nifti1Header()
    header.set_data_shape((48, 48, 48))
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([3.0, 3.0, 3.0, 1.0]), code=1)
    header["vox_offset"] = vox_offset
    raw = header.binaryblock + b"\x01\0\0\0" + struct.pack("<ii", esize, 0)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as handle:
        handle.write(deflate.compress(raw))
        zeros = b"\0" * (1 << 20)
        for _ in range(inflated_mib):
            handle.write(deflate.compress(zeros))
        handle.write(deflate.flush())
    return path


def _peak_bytes(func) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    caught = None
    try:
        func()
    except Exception as exc:  # noqa: BLE001 - returned to the test
        caught = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, caught


def _one_line_naming(exc: BaseException | None, path: Path, *words: str) -> str:
    assert isinstance(exc, VolumeError), repr(exc)
    message = str(exc)
    assert "\n" not in message and message.startswith(str(path)), message
    for word in words:
        assert word in message, message
    return message


# --- D1: a gzip bomb in a NIfTI extension ---------------------------------------------------------


def test_d1_an_extension_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """#43 D1: nibabel inflated the whole stream inside nib.load (a 1 MB file took 2.5 GB)."""
    bomb = bomb_nifti(tmp_path / "sub-bomb_T1w.nii.gz", inflated_mib=96)
    assert bomb.stat().st_size < 200_000
    peak, exc = _peak_bytes(lambda: load_volume(bomb))
    _one_line_naming(exc, bomb, "extension", "7 bytes")
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated to refuse it"


@pytest.mark.parametrize(
    ("esize", "vox_offset", "words"),
    [
        (1 << 30, 368, "extension"),  # an extension claiming 1 GiB past the voxel offset
        (-16, 368, "extension"),  # a negative size: nibabel reads to the end
        (16, MAX_HEADER_BYTES + 1024, "voxel data offset"),  # an offset past the cap
    ],
)
def test_d1_runaway_extension_sizes_and_offsets_are_refused(tmp_path, esize, vox_offset, words):
    bomb = bomb_nifti(tmp_path / "x.nii.gz", inflated_mib=32, esize=esize, vox_offset=vox_offset)
    peak, exc = _peak_bytes(lambda: load_volume(bomb))
    _one_line_naming(exc, bomb, words)
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated to refuse it"


def test_d1_honest_extensions_and_multi_member_gzip_still_load(tmp_path: Path) -> None:
    image = nib.Nifti1Image(head_phantom(), np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 5000))
    path = tmp_path / "with_extension.nii.gz"
    nib.save(image, str(path))
    assert load_volume(path).shape == head_phantom().shape
    raw = gzip.decompress(path.read_bytes())  # the header split over two gzip members
    split = tmp_path / "two_members.nii.gz"
    split.write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    assert np.array_equal(load_volume(split).get_fdata(), load_volume(path).get_fdata())


# --- D2: huge voxels ------------------------------------------------------------------------------


def test_d2_a_field_of_view_of_metres_is_refused_before_resampling(tmp_path: Path) -> None:
    """#43 D2: 32³ voxels of 80 mm (a 117 KB file) resampled to a 640³ grid, 2.5 GB."""
    path = write_nifti(
        tmp_path / "big_voxels.nii.gz", head_phantom((32, 32, 32)), np.diag([80.0] * 3 + [1])
    )
    peak, exc = _peak_bytes(lambda: load_volume(path))
    _one_line_naming(
        exc, path, "field of view 2560 x 2560 x 2560 mm", f"{MAX_FIELD_OF_VIEW_MM:g} mm"
    )
    assert peak < 16 * 2**20


def test_d2_preprocess_refuses_an_in_memory_image_too_wide_to_resample() -> None:
    image = tio.ScalarImage(tensor=torch.rand(1, 8, 8, 8) + 1, affine=np.diag([80.0, 80, 80, 1]))
    peak, exc = _peak_bytes(lambda: preprocess(image, 4.0, (40, 48, 40)))
    assert isinstance(exc, VolumeError) and "field of view 640 x 640 x 640 mm" in str(exc), exc
    assert str(exc).startswith("in-memory image: ")
    assert peak < 16 * 2**20


# --- D14: one short line, never the image object ----------------------------------------------------


@pytest.mark.parametrize("kind", ["negative", "nan_sform", "tiny_voxels"])
def test_d14_errors_name_the_file_in_one_short_line(tmp_path: Path, kind: str) -> None:
    """#43 D14: a non-positive mean put a ~1 KB dump of the nibabel image in the error column."""
    data, affine = head_phantom(), np.diag([3.0, 3.0, 3.0, 1.0])
    if kind == "negative":
        data = -data
    elif kind == "nan_sform":
        affine[0, 3] = np.nan
    else:
        affine = np.diag([1e-3, 1e-3, 1e-3, 1.0])
    path = write_nifti(tmp_path / f"{kind}.nii.gz", data, affine)
    with pytest.raises(VolumeError) as caught:
        preprocess(path, 4.0, (40, 48, 40))
    message = _one_line_naming(caught.value, path)
    assert len(message) < len(str(path)) + 200 and "Nifti1Header" not in message, message
    # and when preprocess is given the loaded image, it names the file it was told about
    if kind == "negative":
        with pytest.raises(VolumeError) as caught:
            preprocess(nib.load(str(path)), 4.0, (40, 48, 40))
        assert str(caught.value).startswith(str(path)), caught.value
        assert "Nifti1Header" not in str(caught.value) and len(str(caught.value)) < 400


# --- D16: what is not a file is not "file not found" -------------------------------------------------


def test_d16_a_fifo_a_folder_a_device_and_broken_links_are_named_for_what_they_are(
    tmp_path: Path,
) -> None:
    """#43 D16: a FIFO, a folder or /dev/zero was reported as "file not found"."""
    fifo = tmp_path / "fifo_T1w.nii.gz"
    os.mkfifo(fifo)
    folder = tmp_path / "folder_T1w.nii.gz"
    folder.mkdir()
    device = tmp_path / "zero_T1w.nii.gz"
    device.symlink_to("/dev/zero")
    dangling = tmp_path / "dangling_T1w.nii.gz"
    dangling.symlink_to(tmp_path / "nowhere.nii.gz")
    loop = tmp_path / "loop_T1w.nii.gz"
    loop.symlink_to(loop.name)
    expected = {
        fifo: "named pipe (FIFO)",
        folder: "is a folder",
        device: "is a device",
        dangling: "broken symbolic link",
        loop: "symbolic link loop",
        tmp_path / "absent.nii.gz": "file not found",
    }
    for path, words in expected.items():
        with pytest.raises(VolumeError) as caught:
            load_volume(path)
        _one_line_naming(caught.value, path, words)


def test_d16_a_manifest_row_pointing_at_a_fifo_or_a_folder_says_so(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.nii.gz"
    os.mkfifo(fifo)
    (tmp_path / "folder.nii.gz").mkdir()
    rows = [
        {"volume_id": v, "dataset": "D", "site": "S", "subject": v, "path": p, "qc_score": "4"}
        for v, p in (("a", "fifo.nii.gz"), ("b", "folder.nii.gz"), ("c", "absent.nii.gz"))
    ]
    manifest = tmp_path / "m.tsv"
    pd.DataFrame(rows).to_csv(manifest, sep="\t", index=False)
    with pytest.warns(UserWarning):
        df = load_manifest(manifest, on_error="skip")
    errors = df.attrs["errors"]
    assert "named pipe (FIFO)" in errors["a"] and "is a folder" in errors["b"], errors
    assert "file not found" in errors["c"], errors
    with pytest.raises(ManifestError, match="named pipe"):
        load_manifest(manifest)


# --- D17: not a T1w scan ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("one_voxel", "fewer than 4 voxels"),
        ("single_slice", "fewer than 4 voxels"),
        ("constant", "constant image"),
        ("mask", "binary mask"),
        ("complex", "complex voxels"),
    ],
)
def test_d17_what_cannot_be_a_t1w_scan_is_refused(tmp_path: Path, kind: str, words: str) -> None:
    """#43 D17: a 1×1×1, constant or binary-mask image was scored "ok"; complex data lost its
    imaginary part."""
    head = head_phantom()
    data = {
        "one_voxel": np.ones((1, 1, 1), np.float32),
        "single_slice": head[:, :, 11:12],
        "constant": np.full(head.shape, 7.0, np.float32),
        "mask": (head > 50).astype(np.uint8),
        "complex": (head + 1j * head).astype(np.complex64),
    }[kind]
    path = write_nifti(tmp_path / f"{kind}.nii.gz", data)
    with pytest.raises(VolumeError) as caught:
        load_volume(path)
    _one_line_naming(caught.value, path, words)


def test_a_binary_mask_still_loads_as_a_mask(tmp_path: Path) -> None:
    mask = write_nifti(tmp_path / "mask.nii.gz", (head_phantom() > 50).astype(np.uint8))
    assert set(np.unique(np.asarray(load_mask(mask).dataobj))) == {0, 1}
