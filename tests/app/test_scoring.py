"""motionqc.app.scoring: loading in workers, error records, inference, QC head, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import head_phantom, write_nifti

from motionqc.app import cli
from motionqc.app.loading import VolumeDataset, collate_records, load_preprocessed
from motionqc.app.scorer import Scorer, batch_rows, score_volumes
from motionqc.app.scoring import run_participant
from motionqc.data.volumes import preprocess
from motionqc.models.encoder import load_encoder, predict_motion, save_encoder
from motionqc.models.sfcn import SFCN, QCHead
from motionqc.runtime.devices import default_num_workers

SPACING, SHAPE = 4.0, (40, 48, 40)


def _affine(spacing: float) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-70.0, -90.0, -60.0]
    return affine


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    return save_encoder(path, SFCN(), spacing_mm=SPACING, shape=SHAPE)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vols")
    nan = head_phantom((36, 44, 38), seed=2)
    nan[1, 2, 3] = np.inf
    empty = root / "empty_T1w.nii.gz"
    empty.write_bytes(b"")
    return {
        "at_4mm": write_nifti(root / "a_T1w.nii.gz", head_phantom((36, 50, 38)), _affine(4.0)),
        "at_3mm": write_nifti(root / "b_T1w.nii", head_phantom((44, 60, 50), 1), _affine(3.0)),
        "nan": write_nifti(root / "nan_T1w.nii.gz", nan, _affine(4.0)),
        "fourd": write_nifti(root / "4d_T1w.nii.gz", np.zeros((8, 8, 8, 3)), _affine(4.0)),
        "empty": empty,
        "missing": root / "missing_T1w.nii.gz",
    }


def test_fast_path_equals_preprocess(volumes: dict[str, Path]) -> None:
    for key in ("at_4mm", "at_3mm"):  # same grid: resampling skipped; other grid: resampled
        fast = load_preprocessed(volumes[key], SPACING, SHAPE)
        reference = preprocess(volumes[key], SPACING, SHAPE).data.float()
        assert fast.shape == (1, *SHAPE) and fast.dtype == torch.float32
        torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)


def test_bad_volumes_give_error_records(volumes: dict[str, Path]) -> None:
    names = list(volumes)
    dataset = VolumeDataset([volumes[k] for k in names], SPACING, SHAPE, names=names, mosaics=True)
    records = {r["bids_name"]: r for r in (dataset[i] for i in range(len(dataset)))}
    assert records["at_4mm"]["error"] == "" and records["at_4mm"]["mosaic"][:4] == b"\x89PNG"
    expected = {
        "nan": "NaN/Inf",
        "fourd": "expected a 3D volume",
        "empty": "empty file",
        "missing": "file not found",
    }
    for key, message in expected.items():
        record = records[key]
        assert record["image"] is None and message in record["error"]
        assert "\n" not in record["error"] and str(volumes[key]) in record["error"]
    batch = collate_records([records["nan"], records["at_4mm"]])
    assert batch["images"].shape == (1, 1, *SHAPE) and batch["good"] == [0]


def test_scorer_matches_plain_eval(encoder: Path, volumes: dict[str, Path]) -> None:
    x = torch.stack([load_preprocessed(volumes[k], SPACING, SHAPE) for k in ("at_4mm", "at_3mm")])
    model, meta = load_encoder(encoder)
    ref_score, ref_std = predict_motion(model, x, bin_range=meta["bin_range"])
    plain = Scorer(encoder, device="cpu", precision="fp32", channels_last=False).predict(x)
    np.testing.assert_allclose(plain["motion_mm"], ref_score, atol=1e-5)
    np.testing.assert_allclose(plain["motion_std"], ref_std, atol=1e-5)
    fast = Scorer(encoder, device="cpu", precision="bf16", channels_last=True).predict(x)
    assert np.abs(fast["motion_mm"] - ref_score).max() < 0.05
    assert "p_qc" not in fast


def test_score_volumes_in_order_with_workers(encoder: Path, volumes: dict[str, Path]) -> None:
    scorer = Scorer(encoder, device="cpu", precision="fp32", threads=1)
    names = list(volumes)
    paths = [volumes[k] for k in names]
    rows = {}
    for workers in (0, 2):
        rows[workers] = list(
            score_volumes(scorer, paths, names=names, batch_size=2, num_workers=workers)
        )
    for got in rows.values():
        assert [r["bids_name"] for r in got] == names
        assert [r["status"] for r in got] == ["ok", "ok", "error", "error", "error", "error"]
    assert [r.get("motion_mm") for r in rows[0]] == [r.get("motion_mm") for r in rows[2]]
    assert all("image" not in r for r in rows[0])  # kept rows do not keep the volumes
    with_inputs = list(score_volumes(scorer, paths, names=names, num_workers=0, inputs=True))
    for row in with_inputs:
        if row["status"] == "ok":
            assert tuple(row["image"].shape) == (1, *scorer.shape) and row["affine"].shape == (4, 4)
        else:
            assert row["image"] is None


def test_inference_failure_is_one_volumes_error() -> None:
    class Picky:
        def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
            if len(images) > 1 or float(images.mean()) > 5:
                raise RuntimeError("out of memory")
            n = len(images)
            bins = np.full((n, 50), 1 / 50)
            return {
                "motion_mm": np.full(n, 0.5),
                "motion_std": np.full(n, 0.1),
                "probabilities": bins,
            }

    records = [
        {
            "index": i,
            "bids_name": f"v{i}",
            "path": "",
            "image": torch.full((1, 2, 2, 2), v),
            "error": "",
            "mosaic": None,
        }
        for i, v in enumerate([1.0, 9.0, 1.0])
    ]
    rows = batch_rows(Picky(), collate_records(records))
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "inference failed: RuntimeError: out of memory" in rows[1]["error"]


def test_cli_score_help_states_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 16 on CUDA, 1 on CPU" in text
    assert f"on CPU one per 8 cores (here {default_num_workers('cpu')})" in text


def test_qc_head_probabilities_and_rescoring(
    tmp_path: Path, encoder: Path, volumes: dict[str, Path]
) -> None:
    from motionqc.models import qc_head  # a broken first-party import must fail, not skip
    from motionqc.training import transfer

    bids = tmp_path / "bids"
    for sub, key in (("01", "at_4mm"), ("02", "at_3mm")):
        target = bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        image = preprocess(volumes[key], 4.0, (36, 44, 38), normalise=False)
        write_nifti(target, image.data[0].numpy(), image.affine)
    out = tmp_path / "out"
    common = {"device": "cpu", "num_workers": 0, "progress": False, "mosaics": False}
    first = run_participant(bids, out, encoder, **common)
    assert first.scored == 2 and first.report is not None
    torch.manual_seed(0)
    size = SFCN().embedding_size(SHAPE)
    head = torch.nn.Sequential(
        qc_head.Standardise(torch.zeros(size), torch.ones(size)), QCHead(size)
    ).eval()
    head_file = qc_head.save_qc_head(tmp_path / "qc_head.pt", transfer.QCRun(head), encoder, {})
    again = run_participant(bids, out, encoder, qc_head=head_file, **common)
    assert again.scored == 2 and again.skipped == 0  # rows without QC classes are redone
    from motionqc.app.scoring import group_table

    merged = group_table(out)
    p = merged[["p_qc0", "p_qc1", "p_qc2"]].astype(float).to_numpy()
    assert len(merged) == 2 and np.allclose(p.sum(1), 1, atol=1e-4)
    assert (merged["qc_class"].astype(int).to_numpy() == p.argmax(1)).all()
    assert "rated" in (out / "report.html").read_text()
    assert run_participant(bids, out, encoder, qc_head=head_file, **common).scored == 0
    torch.manual_seed(1)
    other = save_encoder(tmp_path / "other.pt", SFCN(), spacing_mm=SPACING, shape=SHAPE)
    with pytest.raises(ValueError, match="another encoder"):
        Scorer(other, qc_head=head_file)
    # a head of another QC task (two classes) does not fit the p_qc0..2 columns: refused
    two = torch.nn.Sequential(
        qc_head.Standardise(torch.zeros(size), torch.ones(size)), QCHead(size, n_classes=2)
    ).eval()
    with pytest.raises(ValueError, match="a head of 2 classes; the QC task has 3"):
        qc_head.save_qc_head(tmp_path / "two.pt", transfer.QCRun(two), encoder, {})
    state = torch.load(head_file, weights_only=True)
    state["model"], state["task"] = two.state_dict(), dict(state["task"], n_classes=2)
    two_file = tmp_path / "two.pt"
    torch.save(state, two_file)
    with pytest.raises(ValueError, match="a QC head of 2 classes; motionqc score writes 3"):
        Scorer(encoder, qc_head=two_file)
    # A folder scored before inputs were rescaled to the training range is refused, not mixed.
    description = out / "dataset_description.json"
    meta = json.loads(description.read_text())
    del meta["GeneratedBy"][0]["Model"]["input_intensity"]
    description.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="input scaling mean"):
        run_participant(bids, out, encoder, **common)


def test_scorer_uses_the_input_scaling_and_temperature_its_encoder_records(tmp_path, volumes):
    from motionqc.models.encoder import scale_input
    from motionqc.models.soft_labels import decode, predictive_std

    torch.manual_seed(1)
    model = SFCN(channels=(8, 8, 8, 8, 8, 8))
    path = save_encoder(
        tmp_path / "pct.pt",
        model,
        spacing_mm=SPACING,
        shape=SHAPE,
        input_intensity="percentile",
        temperature=2.5,
        score_convention={"rotations": "applied", "pairs": "consecutive", "radius": 80.0},
    )
    scorer = Scorer(path, device="cpu", precision="fp32", channels_last=False)
    x = load_preprocessed(volumes["at_4mm"], SPACING, SHAPE)[None]
    x[0, 0, 0, 0, 0] = 500.0  # one bright voxel: min-max scaling would change every other value
    got = scorer.predict(x)
    model.eval()
    with torch.no_grad():
        out = model(scale_input(x, "percentile")).float() / 2.5
    assert got["motion_mm"][0] == pytest.approx(float(decode(out)[0]), abs=1e-5)
    assert got["motion_std"][0] == pytest.approx(float(predictive_std(out)[0]), abs=1e-5)
    with torch.no_grad():
        plain = model(scale_input(x, "unit_range")).float()
    assert abs(float(decode(plain)[0]) - got["motion_mm"][0]) > 1e-4
    described = scorer.describe()
    assert described["input_intensity"] == "percentile" and described["temperature"] == 2.5
    assert described["score_convention"]["radius"] == 80.0


def test_default_checkpoint_is_the_released_encoder():
    from motionqc.models.encoder import released_encoder_path

    assert cli._default_checkpoint() == released_encoder_path()
    assert released_encoder_path().parent.name == "weights"
    helptext = cli.build_parser()._subparsers._group_actions[0].choices["score"].format_help()
    assert "released encoder" in " ".join(helptext.split())


def _phantom_heads(bids, n=60):
    """A BIDS folder of ``n`` small phantom heads (enough for a run to be stopped in the middle)."""
    for i in range(n):
        write_nifti(
            bids / f"sub-{i:03d}" / "anat" / f"sub-{i:03d}_T1w.nii.gz",
            head_phantom((36, 50, 38), seed=i),
            _affine(4.0),
        )
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    return bids


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_loader_workers_die_with_a_killed_score(tmp_path, encoder, sig):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    bids = _phantom_heads(tmp_path / "bids")
    cmd = [
        sys.executable,
        "-m",
        "motionqc.app.cli",
        "score",
        str(bids),
        str(tmp_path / "out"),
        "participant",
        "--checkpoint",
        str(encoder),
        "--num-workers",
        "2",
        "--batch-size",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 120
    workers: list[psutil.Process] = []
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = parent.children(recursive=True)
        time.sleep(0.2)
    assert len(workers) >= 2, "the loader workers never started"
    os.kill(proc.pid, getattr(signal, sig))
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=3)  # at once, not at a later poll
    assert not alive, f"{len(alive)} loader worker(s) outlived the killed score"


def test_sigint_ends_score_quietly_and_loses_nothing(tmp_path, encoder):
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd
    import psutil

    n = 400  # many, so that the interrupt lands in the middle however fast this machine scores
    bids = _phantom_heads(tmp_path / "bids", n)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "motionqc.app.cli", "score", str(bids), str(out), "participant",
        "--checkpoint", str(encoder), "--num-workers", "2", "--batch-size", "1", "--no-progress",
    ]  # fmt: skip
    # Ctrl-C's default disposition in the child: a test run started in the background by a
    # non-interactive shell (CI) inherits SIGINT ignored, and Python then keeps it ignored.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    table = out / "motion_T1w.tsv"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if table.is_file() and len(table.read_text().splitlines()) >= 3:  # header + 2 rows
            break
        time.sleep(0.1)
    assert proc.poll() is None, "score ended before it could be interrupted"
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err.strip().splitlines()[-1].endswith("run the same command again to resume")
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"{len(alive)} loader worker(s) outlived the interrupted score"
    first = pd.read_csv(table, sep="\t")
    assert 2 <= len(first) < n
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    final = pd.read_csv(table, sep="\t")
    assert sorted(final["bids_name"]) == [f"sub-{i:03d}_T1w" for i in range(n)]  # once each
    assert final["bids_name"].tolist()[: len(first)] == first["bids_name"].tolist()


def test_an_encoder_with_detail_channels_scores_what_encoder_input_makes(tmp_path, volumes):
    from motionqc.data.detail import encoder_input
    from motionqc.models.encoder import scale_input
    from motionqc.models.soft_labels import decode

    torch.manual_seed(2)
    model = SFCN(channels=(8, 8, 8, 8, 8, 8), in_channels=4)
    path = save_encoder(
        tmp_path / "detail.pt",
        model,
        spacing_mm=SPACING,
        shape=SHAPE,
        input_intensity="percentile",
        detail_mm=1.0,
    )
    scorer = Scorer(path, device="cpu", precision="fp32", channels_last=False)
    assert scorer.describe()["detail_mm"] == 1.0
    paths = [volumes["at_3mm"], volumes["empty"]]
    rows = list(score_volumes(scorer, paths, num_workers=0, inputs=True))
    assert [r["status"] for r in rows] == ["ok", "error"]  # a bad file is still one error row
    x = encoder_input(volumes["at_3mm"], SPACING, SHAPE, 1.0)
    assert rows[0]["image"].shape == (4, *SHAPE) and torch.allclose(rows[0]["image"], x)
    model.eval()
    with torch.no_grad():
        want = float(decode(model(scale_input(x[None], "percentile")))[0])
    assert rows[0]["motion_mm"] == pytest.approx(want, abs=1e-5)


def test_files_sharing_a_bids_name_are_listed_not_scored_over_each_other(
    tmp_path, encoder, capsys
) -> None:
    """#43 D3: two files with one bids_name were both scored into one row, one derivative."""
    import pandas as pd

    bids = tmp_path / "bids"
    head = head_phantom((36, 44, 38))
    same = {
        "sub-01_T1w": ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/sub-01_T1w.nii.gz"],
        "sub-02_T1w": ["sub-02/anat/sub-02_T1w.nii.gz", "sub-02/ses-2/anat/sub-02_T1w.nii.gz"],
        "sub-03_acq-a b_T1w": [
            "sub-03/anat/sub-03_acq-a  b_T1w.nii.gz",  # two spaces
            "sub-03/anat/sub-03_acq-a b_T1w.nii.gz",
        ],
    }
    for seed, rel in enumerate(sorted(r for rels in same.values() for r in rels)):
        write_nifti(bids / rel, head + seed, _affine(4.0))
    write_nifti(bids / "sub-04/anat/sub-04_T1w.nii.gz", head, _affine(4.0))
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    fast = ["--num-workers", "0", "--threads", "1", "--no-mosaics", "--no-progress"]

    out = tmp_path / "out"
    args = ["score", str(bids), str(out), "participant", "--checkpoint", str(encoder), *fast]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "1 scored, 3 error(s), 0 already there; 1/4 scored in all" in captured.out
    for name, rels in same.items():  # one line each, naming every file
        lines = [line for line in captured.err.splitlines() if f"{name}: 2 files share" in line]
        assert len(lines) == 1 and all(rel in lines[0] for rel in rels), captured.err
    table = pd.read_csv(out / "motion_T1w.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = table.set_index("bids_name")
    assert sorted(table["bids_name"]) == sorted([*same, "sub-04_T1w"])  # one row a name
    for name, rels in same.items():
        assert rows.loc[name, "status"] == "error" and rels[1] in rows.loc[name, "error"]
    assert [p.name for p in out.rglob("*_rec-motionqc_T1w.nii.gz")] == [
        "sub-04_rec-motionqc_T1w.nii.gz"
    ]
    assert cli.main(args) == 0  # nothing is "already there" that was never scored
    assert "0 scored, 0 error(s), 4 already there" in capsys.readouterr().out
    # shards: each name listed once, whichever shard its files fall in
    sharded = tmp_path / "sharded"
    shard_args = [a if a != str(out) else str(sharded) for a in args]
    for i in range(3):
        cli.main([*shard_args, "--shard", f"{i}/3"])
    capsys.readouterr()
    merged = pd.concat(pd.read_csv(t, sep="\t") for t in sharded.glob("motion_T1w_shard-*.tsv"))
    assert sorted(merged["bids_name"]) == sorted([*same, "sub-04_T1w"])


def test_shards_with_different_encoders_started_at_once_are_refused(tmp_path, encoder) -> None:
    """#43 D10: two shards started at once with different --checkpoint were both accepted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from motionqc.data.volumes import file_sha256

    bids = _phantom_heads(tmp_path / "bids", 4)
    out = tmp_path / "out"
    torch.manual_seed(5)
    other = save_encoder(tmp_path / "other.pt", SFCN(), spacing_mm=SPACING, shape=SHAPE)
    common = ["--num-workers", "0", "--threads", "1", "--no-mosaics", "--no-progress"]
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "motionqc.app.cli",
            "score",
            str(bids),
            str(out),
            "participant",
            "--checkpoint",
            str(encoder),
            "--shard",
            "0/2",
            *common,
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    table = out / "motion_T1w_shard-0000of0002.tsv"
    deadline = time.time() + 180
    while not table.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(first.pid, signal.SIGSTOP)  # shard 0 has started: its table is there
    try:
        assert first.poll() is None, first.stderr.read()
        rc = cli.main(
            ["score", str(bids), str(out), "participant", "--checkpoint", str(other)]
            + ["--shard", "1/2", *common]
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert rc == 2  # the second encoder is refused at once
    assert first.returncode == 0, err
    model = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]["Model"]
    assert model["sha256"] == file_sha256(encoder)
    assert not (out / "motion_T1w_shard-0001of0002.tsv").exists() or (
        len((out / "motion_T1w_shard-0001of0002.tsv").read_text().splitlines()) == 1
    )  # nothing scored with the other encoder


def test_loader_workers_are_capped_by_the_cores(tmp_path, encoder) -> None:
    """#43 D19: --num-workers was capped only by the number of volumes."""
    from motionqc.runtime.devices import usable_cores

    bids = _phantom_heads(tmp_path / "bids", 3)
    said: list[str] = []
    run_participant(
        bids, tmp_path / "out", encoder, device="cpu", num_workers=64, threads=1,
        mosaics=False, progress=False, report=False, log=said.append,
    )  # fmt: skip
    (line,) = [s for s in said if "loader worker(s)" in s]
    assert f", {min(3, usable_cores())} loader worker(s)" in line, line
