"""`motionqc score` on hostile file names and on files that claim gigabytes (issue #43).

D1 (a gzip bomb in a NIfTI extension) and D2 (32³ voxels of 80 mm) must not raise the peak memory
of a run; D8 (a name over 240 characters), D9 (a byte that is not UTF-8) and D18 (escape
sequences, a leading ``=``) must give one line naming the file while the batch goes on. Every
odd file is made here; the encoder is a randomly initialised SFCN at the smoke geometry.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import head_phantom, write_nifti

from motionqc.app.cli import main
from motionqc.app.pictures import views_png

FAST = ["--num-workers", "0", "--threads", "1", "--no-mosaics", "--no-progress", "--device", "cpu"]
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def _study(root: Path, names: list[str]) -> Path:
    """A tiny BIDS tree: one phantom head per name (``sub-X_T1w``)."""
    for i, name in enumerate(names):
        subject = name.split("_")[0]
        write_nifti(root / subject / "anat" / f"{name}.nii.gz", head_phantom(seed=i), AFFINE)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    return root


def _score(bids: Path, out: Path, encoder: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = main(["score", str(bids), str(out), "participant", "--checkpoint", str(encoder), *FAST])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _table(out: Path) -> pd.DataFrame:
    text = (out / "motion_T1w.tsv").read_text(encoding="utf-8")  # the table is UTF-8 text
    return pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)


def test_d8_a_file_name_too_long_for_its_derived_files_is_one_error_row(
    tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D8: a 255-character name died with ENAMETOOLONG writing its figures, every rerun."""
    bids = _study(tmp_path / "bids", ["sub-01_T1w", "sub-03_T1w"])
    long_name = "sub-02_acq-" + "a" * (255 - len("sub-02_acq-_T1w.nii.gz")) + "_T1w"
    write_nifti(bids / "sub-02" / "anat" / f"{long_name}.nii.gz", head_phantom(seed=9), AFFINE)
    out = tmp_path / "out"
    args = ["score", str(bids), str(out), "participant", "--checkpoint", str(encoder)]
    args += [a for a in FAST if a != "--no-mosaics"]  # mosaics on: the figures' names overflow
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and "2 scored, 1 error(s)" in printed.out, printed
    row = _table(out).set_index("bids_name").loc[long_name]
    assert row["status"] == "error" and "file name too long" in row["error"], row["error"]
    assert main(args) == 0  # a rerun does not die at the same file
    assert "0 scored, 0 error(s), 3 already there" in capsys.readouterr().out


def test_d9_a_file_name_that_is_not_utf8_is_named_escaped_and_the_batch_goes_on(
    tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D9: a Latin-1 byte in a name raised UnicodeEncodeError writing the table (exit 2)."""
    bids = _study(tmp_path / "bids", ["sub-01_T1w", "sub-03_T1w"])
    anat = bids / "sub-02" / "anat"
    good = write_nifti(anat / "tmp.nii.gz", head_phantom(seed=5), AFFINE)
    os.rename(bytes(good), os.fsencode(anat) + b"/sub-02_acq-caf\xe9_T1w.nii.gz")
    out = tmp_path / "out"
    rc, printed = _score(bids, out, encoder, capsys)
    assert rc == 0, printed
    printed.encode("utf-8")  # nothing unprintable reached the terminal
    table = _table(out).set_index("bids_name")
    assert sorted(table.index) == ["sub-01_T1w", "sub-02_acq-caf\\xe9_T1w", "sub-03_T1w"]
    error = table.loc["sub-02_acq-caf\\xe9_T1w", "error"]
    assert "not UTF-8" in error and "sub-02_acq-caf\\xe9_T1w.nii.gz" in error, error
    assert "not scored: sub-02_acq-caf\\xe9_T1w" in printed
    rc, printed = _score(bids, out, encoder, capsys)  # not stuck: the rerun has nothing to do
    assert rc == 0 and "0 scored, 0 error(s), 3 already there" in printed, printed


def test_d18_escape_sequences_never_reach_the_terminal_and_formulas_are_defused(
    tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D18: escape sequences in file names reached the terminal raw; a name starting with
    `=` landed first in a TSV cell (a spreadsheet runs it)."""
    escape = "sub-01_acq-\x1b[2J\x1b]0;owned\x07_T1w"  # clears the screen, sets the title
    formula = "=SUM(1+2)*cmd|'calc'!A0_T1w"  # what a spreadsheet would run (no slash)
    bids = _study(tmp_path / "bids", ["sub-02_T1w"])
    write_nifti(bids / "sub-01" / "anat" / f"{escape}.nii.gz", head_phantom(seed=1), AFFINE)
    write_nifti(bids / "sub-03" / "anat" / f"{formula}.nii.gz", head_phantom(seed=2), AFFINE)
    broken = bids / "sub-04" / "anat" / "sub-04_acq-\x1b[31m_T1w.nii.gz"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a NIfTI")  # an error row whose message holds the name
    out = tmp_path / "out"
    rc, printed = _score(bids, out, encoder, capsys)
    assert rc == 0, printed
    assert "\x1b" not in printed and "\x07" not in printed, printed
    raw = (out / "motion_T1w.tsv").read_text(encoding="utf-8")
    assert "\x1b" not in raw and "\x07" not in raw
    for line in raw.splitlines()[1:]:
        assert all(not cell.startswith(("=", "+", "-", "@")) for cell in line.split("\t")), line
    table = _table(out).set_index("bids_name")
    assert table.loc["sub-01_acq-\\x1b[2J\\x1b]0;owned\\x07_T1w", "status"] == "ok"
    assert table.loc["'" + formula, "status"] == "ok"
    assert "\\x1b[31m" in table.loc["sub-04_acq-\\x1b[31m_T1w", "error"]
    rc, printed = _score(bids, out, encoder, capsys)  # the names are found again: nothing to do
    assert "0 scored, 0 error(s), 4 already there" in printed, printed


def test_d2_the_views_picture_stays_bounded_along_a_very_anisotropic_axis() -> None:
    """#43 D2: the views picture grew with the ratio of the voxel sizes."""
    volume = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    png = views_png(volume, zooms=(0.001, 1.0, 1.0))  # 1 mm across, 0.001 mm along X
    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR
    assert height <= 3 * (1024 + 3) and width <= 4 * 1024 + 3 * 2 + 6, (width, height)
    plain = views_png(volume, zooms=(1.0, 1.0, 1.0))  # isotropic: every voxel, one pixel each
    assert struct.unpack(">II", plain[16:24]) == (4 * 16 + 3 * 2 + 6, 3 * (16 + 3))


def _bomb(path: Path, inflated_mib: int) -> Path:
    """A .nii.gz claiming 48³ float32 with an extension of 7 bytes hiding ``inflated_mib`` MiB."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((48, 48, 48))
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([3.0, 3.0, 3.0, 1.0]), code=1)
    header["vox_offset"] = 368
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(
            deflate.compress(header.binaryblock + b"\x01\0\0\0" + struct.pack("<ii", 7, 0))
        )
        for _ in range(inflated_mib):
            handle.write(deflate.compress(b"\0" * (1 << 20)))
        handle.write(deflate.flush())
    return path


def test_d1_d2_peak_memory_with_a_bomb_and_huge_voxels_stays_within_1_5x(
    tmp_path: Path, encoder: Path
) -> None:
    """#43: peak RSS of `motionqc score` on a folder with D1's and D2's files within 1.5x of the
    same folder without them (one volume, loaded in the scoring process)."""
    clean = _study(tmp_path / "clean", ["sub-01_T1w"])
    hostile = _study(tmp_path / "hostile", ["sub-01_T1w"])
    _bomb(hostile / "sub-bomb" / "anat" / "sub-bomb_T1w.nii.gz", inflated_mib=512)
    huge = np.diag([80.0, 80.0, 80.0, 1.0])  # 32 voxels of 80 mm: 2.56 m across
    write_nifti(
        hostile / "sub-pix" / "anat" / "sub-pix_T1w.nii.gz", head_phantom((32, 32, 32)), huge
    )
    probe = (
        "import resource, sys\n"
        "from motionqc.app.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    peaks = {}
    for name, root in (("clean", clean), ("hostile", hostile)):
        out = tmp_path / f"out_{name}"
        args = ["score", str(root), str(out), "participant", "--checkpoint", str(encoder), *FAST]
        done = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        peaks[name] = int(done.stdout.split("PEAK")[-1])
    table = _table(tmp_path / "out_hostile").set_index("bids_name")
    assert "extension" in table.loc["sub-bomb_T1w", "error"]
    assert "field of view" in table.loc["sub-pix_T1w", "error"]
    assert table.loc["sub-01_T1w", "status"] == "ok"
    assert peaks["hostile"] <= 1.5 * peaks["clean"], peaks
