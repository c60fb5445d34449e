"""motionqc.app.cli: `motionqc score` end to end on a small BIDS tree, group, simulate, train-qc.

The encoder is a randomly initialised SFCN at the smoke geometry (4 mm, 40x48x40): these tests
check the plumbing (tables, metadata, shards, resume, report), not the accuracy.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import head_phantom, write_nifti

from motionqc.app.cli import main
from motionqc.app.derivatives import GROUP_TABLE
from motionqc.app.scoring import COLUMNS
from motionqc.app.simulate import simulate_file
from motionqc.data.volumes import preprocess
from motionqc.models.encoder import save_encoder
from motionqc.models.sfcn import SFCN
from motionqc.physics.score import score_motion

SMOKE = {"spacing_mm": 4.0, "shape": (40, 48, 40)}
GOOD = ["sub-colin_ses-01_T1w", "sub-mni_T1w", "sub-robex_T1w"]
BAD = {
    "sub-broken_T1w": "unreadable or truncated",
    "sub-fourd_T1w": "expected a 3D volume",
    "sub-nan_T1w": "NaN/Inf",
}
ALL = sorted(GOOD + list(BAD))
FAST = ["--num-workers", "0", "--threads", "1", "--no-mosaics", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    return save_encoder(path, SFCN(), info={"note": "random init, plumbing tests"}, **SMOKE)


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory, sample: pd.DataFrame) -> Path:
    """Three real sample heads (resampled to 2 mm to keep the test light) and three bad files."""
    root = tmp_path_factory.mktemp("data") / "bids"
    heads = sample.set_index("volume_id")["path"]
    where = {
        "robex_atlas": "sub-robex/anat/sub-robex_T1w.nii.gz",
        "colin27": "sub-colin/ses-01/anat/sub-colin_ses-01_T1w.nii.gz",
        "mni152_2009": "sub-mni/anat/sub-mni_T1w.nii.gz",
    }
    for volume_id, rel in where.items():
        image = preprocess(heads[volume_id], 2.0, (96, 112, 96), normalise=False)
        write_nifti(root / rel, image.data[0].numpy(), image.affine)
    good = (root / where["robex_atlas"]).read_bytes()
    broken = root / "sub-broken/anat/sub-broken_T1w.nii.gz"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(good[: len(good) // 3])  # truncated gzip: a copy cut short
    write_nifti(root / "sub-fourd/anat/sub-fourd_T1w.nii.gz", np.stack([head_phantom()] * 2, -1))
    nan = head_phantom()
    nan[3, 4, 5] = np.nan
    write_nifti(root / "sub-nan/anat/sub-nan_T1w.nii.gz", nan)
    (root / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.9.0"}')
    return root


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _check_scores(table: pd.DataFrame, names: list[str]) -> None:
    assert sorted(table["bids_name"]) == sorted(names)
    ok = table[table["status"] == "ok"]
    assert sorted(ok["bids_name"]) == sorted(n for n in names if n not in BAD)
    assert np.isfinite(ok["motion_mm"].astype(float)).all()
    assert (ok["motion_std"].astype(float) >= 0).all() and (ok["error"] == "").all()
    for name, message in BAD.items():
        if name in names:
            row = table.set_index("bids_name").loc[name]
            assert row["status"] == "error" and message in row["error"]
            assert row["motion_mm"] == ""


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, bids: Path, encoder: Path) -> tuple[Path, str]:
    """One full `motionqc score` run (one loader worker, mosaics, report): its folder and output."""
    out = tmp_path_factory.mktemp("scored") / "derivatives" / "motionqc"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(
            [
                "score",
                str(bids),
                str(out),
                "participant",
                "--checkpoint",
                str(encoder),
                "--num-workers",
                "1",
                "--threads",
                "1",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
    assert rc == 0
    return out, stdout.getvalue()


def test_score_end_to_end(scored: tuple[Path, str], bids: Path) -> None:
    out, printed = scored
    assert "3 scored, 3 error(s), 0 already there" in printed
    table = _table(out / "motion_T1w.tsv")
    assert list(table.columns) == list(COLUMNS)
    _check_scores(table, ALL)
    assert table.set_index("bids_name").loc["sub-colin_ses-01_T1w", "session"] == "01"
    assert (table["p_qc0"] == "").all()  # no QC head given

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    model = description["GeneratedBy"][0]["Model"]
    assert model["spacing_mm"] == 4.0 and model["shape"] == [40, 48, 40]
    assert len(model["sha256"]) == 64 and model["precision"] in ("fp32", "bf16")
    assert description["SourceDatasets"][0]["URL"] == bids.resolve().as_uri()

    for name in GOOD:  # encoder input and original views per scored volume, in sub-<label>/figures/
        subject = name.split("_")[0]
        assert (out / subject / "figures" / f"{name}_mosaic.png").is_file()
        assert (out / subject / "figures" / f"{name}_views.png").is_file()
    # the derivative proper: the encoder's input as NIfTI, its scores in the sidecar
    row = table.set_index("bids_name").loc["sub-colin_ses-01_T1w"]
    nifti = out / "sub-colin/ses-01/anat/sub-colin_ses-01_rec-motionqc_T1w.nii.gz"
    sidecar = json.loads(nifti.with_name(nifti.name.replace(".nii.gz", ".json")).read_text())
    assert nib.load(nifti).shape == (40, 48, 40)
    assert np.isclose(sidecar["MotionScore"], float(row["motion_mm"]), atol=1e-4)
    assert len(sidecar["BinProbabilities"]) == 50
    assert np.isclose(sum(sidecar["BinProbabilities"]), 1.0, atol=1e-4)
    assert sidecar["Sources"] == ["bids:raw:sub-colin/ses-01/anat/sub-colin_ses-01_T1w.nii.gz"]
    html = (out / "report.html").read_text()
    assert all(name in html for name in ALL)
    assert html.count('<tr class="vol"') == 3 and html.count('<tr class="error">') == 3
    # encoder inputs + original views + group distribution, all embedded; one bin chart each
    assert html.count("data:image/png;base64,") == 3 + 3 + 1
    assert html.count('<svg class="bins"') == 3
    ranked = table[table["status"] == "ok"].sort_values("motion_mm", key=lambda s: -s.astype(float))
    positions = [html.index(n) for n in ranked["bids_name"]]
    assert positions == sorted(positions)  # worst first
    assert _table(out / GROUP_TABLE).shape[0] == len(ALL)


def bids_validator() -> str | None:
    """The ``bids-validator`` (npm) to run: ``$MOTIONQC_BIDS_VALIDATOR``, ``build/`` or ``PATH``."""
    named = os.environ.get("MOTIONQC_BIDS_VALIDATOR")
    if named:
        return named
    local = Path(__file__).parents[2] / "build/bids-validator/node_modules/.bin/bids-validator"
    return str(local) if local.is_file() else shutil.which("bids-validator")


def test_scored_folder_passes_the_bids_validator(scored: tuple[Path, str]) -> None:
    validator = bids_validator()
    if validator is None or shutil.which("node") is None:
        message = "bids-validator (npm) is not installed: .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must validate the derivatives")
        pytest.skip(message)
    done = subprocess.run(
        [validator, str(scored[0]), "--json"], capture_output=True, text=True, timeout=300
    )
    report = json.loads(done.stdout)
    errors = [
        (e["key"], [f["file"]["relativePath"] for f in e["files"][:3]])
        for e in report["issues"]["errors"]
    ]
    assert errors == []
    summary = report["summary"]
    assert summary["subjects"] == ["colin", "mni", "robex"] and summary["sessions"] == ["01"]


def test_rerun_scores_nothing_new(
    scored: tuple[Path, str],
    tmp_path: Path,
    bids: Path,
    encoder: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(scored[0], out)
    args = ["score", str(bids), str(out), "participant", "--checkpoint", str(encoder), *FAST]
    before = (out / "motion_T1w.tsv").read_text()
    assert main(args) == 0
    assert "0 scored, 0 error(s), 6 already there" in capsys.readouterr().out
    assert (out / "motion_T1w.tsv").read_text() == before  # nothing written twice
    # --retry-errors tries the bad files again (they fail again); the scores stay
    assert main([*args, "--retry-errors"]) == 0
    assert "0 scored, 3 error(s), 3 already there" in capsys.readouterr().out
    _check_scores(_table(out / GROUP_TABLE), ALL)  # the merged table keeps one row each
    # another encoder in the same folder is refused (the scores would mix)
    torch.manual_seed(1)
    other = save_encoder(tmp_path / "other.pt", SFCN(), **SMOKE)
    assert (
        main(["score", str(bids), str(out), "participant", "--checkpoint", str(other), *FAST]) == 2
    )
    assert "another encoder" in capsys.readouterr().err


def test_score_resumes_after_interruption(tmp_path: Path, bids: Path, encoder: Path) -> None:
    out = tmp_path / "out"
    args = ["score", str(bids), str(out), "participant", "--checkpoint", str(encoder), *FAST]
    assert main([*args, "--participant-label", "mni", "sub-nan"]) == 0
    with open(out / "motion_T1w.tsv", "a") as handle:  # a kill in the middle of a row
        handle.write("sub-robex_T1w\t\t\t0.4")
    assert main(args) == 0
    table = _table(out / "motion_T1w.tsv")
    _check_scores(table, ALL)  # every volume once, the cut row gone
    assert table["bids_name"].tolist()[:2] == ["sub-mni_T1w", "sub-nan_T1w"]


def test_shards_cover_everything_once_and_group_merges(
    tmp_path: Path, bids: Path, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ["score", str(bids), str(out), "participant", "--checkpoint", str(encoder), *FAST]
    # sorted by path, shard 0 holds sub-broken, sub-fourd and sub-nan: nothing to score there
    assert main([*args, "--shard", "0/2"]) == 1
    assert main([*args, "--shard", "1/2"]) == 0
    shards = [_table(out / f"motion_T1w_shard-{i:04d}of0002.tsv") for i in range(2)]
    names = [set(s["bids_name"]) for s in shards]
    assert names[0] and names[1] and not names[0] & names[1]  # no overlap
    assert sorted(names[0] | names[1]) == ALL  # nothing missing
    assert not (out / "report.html").exists()  # sharded runs leave the report to `group`
    capsys.readouterr()

    assert main(["group", str(out)]) == 0
    assert "6 volume(s), 3 scored" in capsys.readouterr().out
    merged = _table(out / GROUP_TABLE)
    _check_scores(merged, ALL)
    html = (out / "report.html").read_text()
    assert all(name in html for name in ALL)


def test_output_inside_bids_is_refused(
    tmp_path: Path, bids: Path, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    inside = bids / "derivatives" / "motionqc"
    rc = main(["score", str(bids), str(inside), "participant", "--checkpoint", str(encoder)])
    assert rc == 2 and "must not be inside the BIDS dataset" in capsys.readouterr().err
    assert not (bids / "derivatives").exists()


def test_nothing_scored_exits_non_zero(
    tmp_path: Path, bids: Path, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ["score", str(bids), str(out), "participant", "--checkpoint", str(encoder), *FAST]
    assert main([*args, "--participant-label", "broken", "nan"]) == 1
    assert "nothing could be scored" in capsys.readouterr().err
    assert _table(out / "motion_T1w.tsv").shape[0] == 2  # the errors are still listed
    assert main([*args, "--participant-label", "nobody"]) == 1
    assert (
        main(
            [
                "score",
                str(bids),
                str(tmp_path / "o2"),
                "participant",
                "--checkpoint",
                str(tmp_path / "missing.pt"),
                *FAST,
            ]
        )
        == 2
    )
    assert "no encoder file" in capsys.readouterr().err
    assert main(["group", str(tmp_path / "empty")]) == 1


def test_console_script_subprocess(tmp_path: Path, bids: Path, encoder: Path) -> None:
    script = Path(sys.executable).with_name("motionqc")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "motionqc.app.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    helped = subprocess.run(
        [*command, "score", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    assert "--shard I/N" in helped.stdout and "(default: auto)" in helped.stdout
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *command,
            "score",
            str(bids),
            str(out),
            "participant",
            "--checkpoint",
            str(encoder),
            "--participant-label",
            "mni",
            "broken",
            *FAST,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _check_scores(_table(out / "motion_T1w.tsv"), ["sub-broken_T1w", "sub-mni_T1w"])
    assert (out / "report.html").is_file()


def test_report_renders_in_headless_chromium(scored: tuple[Path, str], tmp_path: Path) -> None:
    from cdp import HEADLESS_FLAGS
    from test_report import require_chromium

    browser = require_chromium()
    flags = [*HEADLESS_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    page = (scored[0] / "report.html").as_uri()
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    assert all(name in dom for name in ALL)  # the rendered page lists every volume
    assert dom.count('<tr class="vol') == 3 and dom.count('<tr class="error">') == 3
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1000,1400", page],
        capture_output=True,
        timeout=180,
        check=True,
    )
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (1400, 1000) and image.std() > 10


def test_simulate_hits_the_target_score(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-30, -40, -30]
    source = write_nifti(tmp_path / "in_T1w.nii.gz", head_phantom((32, 40, 28)), affine)
    out = tmp_path / "sim" / "out_T1w.nii.gz"
    args = ["simulate", str(source), str(out), "--score", "1.5", "--seed", "3"]
    assert main([*args, "--n-transforms", "4"]) == 0
    sidecar = json.loads((tmp_path / "sim" / "out_T1w.json").read_text())
    assert abs(sidecar["Score"] - 1.5) < 1e-4 and sidecar["NTransforms"] == 4
    assert np.asarray(sidecar["Degrees"]).shape == (4, 3) and len(sidecar["Times"]) == 4
    # the sidecar's parameters give the same score when scored independently
    shape = nib.load(str(source)).shape
    again = score_motion(sidecar["Degrees"], sidecar["Translation"], affine, shape)
    assert abs(again - 1.5) < 1e-3
    moved, original = nib.load(str(out)), nib.load(str(source))
    assert moved.shape == original.shape and np.allclose(moved.affine, original.affine)
    a, b = np.asarray(moved.dataobj), np.asarray(original.dataobj)
    assert np.isfinite(a).all() and np.abs(a - b).mean() > 0.01 * np.abs(b).mean()
    # same seed, same result; the parameters are drawn from the seed
    twin = simulate_file(source, tmp_path / "twin.nii.gz", 1.5, seed=3, n_transforms=4)
    assert twin["Degrees"] == sidecar["Degrees"]
    assert "motion score 1.5" in capsys.readouterr().out
    assert main(["simulate", str(tmp_path / "nope.nii.gz"), str(out)]) == 1


def test_simulate_refuses_a_corrupt_volume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti"))
    assert main(["simulate", str(bad), str(tmp_path / "o.nii.gz")]) == 1
    assert "bad.nii.gz" in capsys.readouterr().err


def test_train_qc_is_wired_to_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import types

    calls = []
    fake = types.ModuleType("motionqc.app.train_qc")
    fake.train_qc_cli = lambda *a, **k: calls.append(a) or Path(a[2]) / "qc_results.csv"
    monkeypatch.setitem(sys.modules, "motionqc.app.train_qc", fake)
    rc = main(
        ["train-qc", "--manifest", "r.tsv", "--checkpoint", "e.pt", str(tmp_path), "--seeds", "2"]
    )
    assert rc == 0 and calls == [(Path("r.tsv"), Path("e.pt"), tmp_path, 2)]
    monkeypatch.setitem(sys.modules, "motionqc.app.train_qc", None)  # import fails
    assert main(["train-qc", "--manifest", "r.tsv", "--checkpoint", "e.pt", str(tmp_path)]) == 2
    assert "needs motionqc.app.train_qc" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["bogus", "cuda", "cuda:7", "meta"])
def test_bad_device_is_one_line_and_exit_2(tmp_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has CUDA")  # "cuda" is then a valid device
    bids = tmp_path / "bids"
    bids.mkdir()
    rc = main(["score", str(bids), str(tmp_path / "out"), "participant", "--device", device])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "device" in err and "Traceback" not in err


def test_train_qc_help_lists_every_required_column():
    from motionqc.app.cli import build_parser
    from motionqc.data.volumes import REQUIRED_COLUMNS

    parser = build_parser()
    text = " ".join(parser._subparsers._group_actions[0].choices["train-qc"].format_help().split())
    for column in REQUIRED_COLUMNS:
        assert column in text, column


def test_whitespace_in_a_name_is_not_scored_again(
    tmp_path: Path, sample: pd.DataFrame, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "my study"  # a space in the dataset's folder: the report's title
    image = preprocess(sample["path"].iloc[0], 4.0, (40, 48, 40), normalise=False)
    odd = "sub-odd/anat/sub-odd_acq-a \t b_T1w.nii.gz"  # a tab and repeated spaces in the name
    write_nifti(root / odd, image.data[0].numpy(), image.affine)
    (root / "dataset_description.json").write_text('{"Name": "odd", "BIDSVersion": "1.9.0"}')
    out = tmp_path / "out"
    args = ["score", str(root), str(out), "participant", "--checkpoint", str(encoder), *FAST]
    assert main(args) == 0
    assert "1 scored" in capsys.readouterr().out
    assert _table(out / "motion_T1w.tsv")["bids_name"].tolist() == ["sub-odd_acq-a b_T1w"]
    assert "<title>motionqc report: my study</title>" in (out / "report.html").read_text()
    assert main(args) == 0
    assert "0 scored, 0 error(s), 1 already there" in capsys.readouterr().out


def test_the_same_shard_twice_at_once_is_refused(
    tmp_path: Path, bids: Path, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    from motionqc.app.scoring import shard_lock

    out = tmp_path / "out"
    out.mkdir()
    args = ["score", str(bids), str(out), "participant", "--checkpoint", str(encoder), *FAST]
    with shard_lock(out, 0, 2):  # another process scoring shard 0/2 of this folder
        assert main([*args, "--shard", "0/2", "--participant-label", "mni"]) == 2
        err = capsys.readouterr().err
        assert "shard 0/2 is being scored by another motionqc process" in err
        assert len(err.strip().splitlines()) == 1
        assert not (out / "motion_T1w_shard-0000of0002.tsv").exists()  # nothing written
    # Once it has ended, the same shard runs.
    assert main([*args, "--shard", "0/2", "--participant-label", "mni"]) == 0


def test_a_missing_dataset_description_is_reported(
    tmp_path: Path, sample: pd.DataFrame, encoder: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "no_description"
    image = preprocess(sample["path"].iloc[0], 4.0, (40, 48, 40), normalise=False)
    write_nifti(root / "sub-a/anat/sub-a_T1w.nii.gz", image.data[0].numpy(), image.affine)
    out = tmp_path / "out"
    assert (
        main(["score", str(root), str(out), "participant", "--checkpoint", str(encoder), *FAST])
        == 0
    )
    assert "no dataset_description.json" in capsys.readouterr().err


def test_a_header_bomb_in_the_folder_does_not_raise_peak_memory(
    tmp_path: Path, bids: Path, encoder: Path
) -> None:
    """Peak RSS of `score` (loading in-process) on a folder, with and without an 89-byte bomb."""
    from conftest import forged_nifti

    clean, bombed = tmp_path / "clean", tmp_path / "bombed"
    for root in (clean, bombed):
        shutil.copytree(bids / "sub-mni", root / "sub-mni")
        (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    (bombed / "sub-bomb" / "anat").mkdir(parents=True)
    bomb = forged_nifti(bombed / "sub-bomb/anat/sub-bomb_T1w.nii.gz", (1150, 1150, 1150))
    assert bomb.stat().st_size < 200  # claims 6 GB of float32
    probe = (
        "import resource, sys\n"
        "from motionqc.app.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    peaks = {}
    for name, root in (("clean", clean), ("bombed", bombed)):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                probe,
                "score",
                str(root),
                str(tmp_path / f"out_{name}"),
                "participant",
                "--checkpoint",
                str(encoder),
                *FAST,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        peaks[name] = int(done.stdout.split("PEAK")[-1])
    table = _table(tmp_path / "out_bombed" / "motion_T1w.tsv").set_index("bids_name")
    assert table.loc["sub-bomb_T1w", "status"] == "error"
    assert "header claims" in table.loc["sub-bomb_T1w", "error"]
    assert peaks["bombed"] <= 1.5 * peaks["clean"], peaks
