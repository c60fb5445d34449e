"""The command line's messages: one line that blames the right thing, never a traceback (#43).

D15: a read-only output folder, a full disk, an output path that is a file, `simulate` to a name
that is not NIfTI. D16: empty or mis-encoded manifests and ratings, a NIfTI given as
`--checkpoint` or `--qc-head`, `--threads 1000`, a missing module blamed on `--qc-head`. D17:
`--participant-label` naming a subject the dataset does not hold, a folder that cannot be read.
File permissions are enforced for root by dropping its DAC capabilities (``setpriv``).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import head_phantom, write_nifti

from motionqc.app.cli import main

FAST = ["--num-workers", "0", "--threads", "1", "--no-mosaics", "--no-progress", "--device", "cpu"]
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
CLI = [sys.executable, "-m", "motionqc.app.cli"]


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study") / "bids"
    for i, label in enumerate(["01", "02"]):
        write_nifti(root / f"sub-{label}/anat/sub-{label}_T1w.nii.gz", head_phantom(seed=i), AFFINE)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    return root


def _score_args(bids: Path, out: Path, encoder: Path, *extra: str) -> list[str]:
    return [
        "score",
        str(bids),
        str(out),
        "participant",
        "--checkpoint",
        str(encoder),
        *FAST,
        *extra,
    ]


def _error_line(err: str) -> str:
    """The run's one error line (warnings and progress lines aside); no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("motionqc: error:")]
    assert len(errors) == 1, err
    return errors[0]


def _unprivileged(command: list[str]) -> list[str]:
    """``command`` run so that file permissions apply (root drops its DAC capabilities)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv: file permissions cannot be enforced")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, **kwargs)


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# --- D15: tracebacks instead of one line ------------------------------------------------------------


def test_d15_an_output_path_that_is_a_file_is_one_line(tmp_path, bids, encoder, capsys) -> None:
    """#43 D15: `score BIDS out_file participant` raised FileExistsError."""
    out = tmp_path / "results.txt"
    out.write_text("mine\n")
    assert main(_score_args(bids, out, encoder)) == 2
    line = _error_line(capsys.readouterr().err)
    assert str(out) in line and "is a file, not a folder" in line, line
    assert out.read_text() == "mine\n"


def test_d15_train_qc_to_an_output_path_that_is_a_file_is_one_line(
    tmp_path, bids, encoder, capsys
) -> None:
    ratings = tmp_path / "ratings.tsv"
    ratings.write_text("bids_name\trating\nsub-01_T1w\t3\n")
    out = tmp_path / "qc.txt"
    out.write_text("mine\n")
    args = ["train-qc", "--manifest", str(ratings), "--bids-dir", str(bids), "--checkpoint"]
    assert main([*args, str(encoder), str(out)]) == 1
    line = _error_line(capsys.readouterr().err)
    assert str(out) in line and "File exists" in line, line
    assert out.read_text() == "mine\n"


def test_d15_a_read_only_output_folder_is_one_line(tmp_path, bids, encoder) -> None:
    """#43 D15: a folder that cannot be written raised PermissionError."""
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        done = _run(_unprivileged([*CLI, *_score_args(bids, out, encoder)]))
    finally:
        out.chmod(0o755)
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    assert str(out) in line and "Permission denied" in line, line
    assert not any(out.iterdir())


def _file_size_limit(limit: int):
    def set_limit() -> None:  # a full disk, for this child only: writes past `limit` fail
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_d15_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, bids, encoder) -> None:
    """#43 D15: a full disk gave a traceback and left an orphan temporary file."""
    out = tmp_path / "out"
    done = _run([*CLI, *_score_args(bids, out, encoder)], preexec_fn=_file_size_limit(8192))
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    assert "File too large" in line and "run the same command again" in line, line
    assert _temporary_files(out) == []
    again = _run([*CLI, *_score_args(bids, out, encoder)])  # space again: the run completes
    assert again.returncode == 0, again.stderr
    assert "2/2 scored in all" in again.stdout, again.stdout


@pytest.mark.parametrize("name", ["out.png", "outname"])
def test_d15_simulate_to_a_name_that_is_not_nifti_is_refused_first(tmp_path, capsys, name) -> None:
    """#43 D15: `simulate IN out.png` raised ImageFileError; `simulate IN outname` raised
    FileNotFoundError and left `.tmp-<pid>-outname.nii` behind."""
    source = write_nifti(tmp_path / "in_T1w.nii.gz", head_phantom(), AFFINE)
    folder = tmp_path / "sim"
    folder.mkdir()
    assert main(["simulate", str(source), str(folder / name)]) == 1
    line = _error_line(capsys.readouterr().err)
    assert str(folder / name) in line and ".nii or .nii.gz" in line, line
    assert list(folder.iterdir()) == []


def test_d15_simulate_on_a_full_disk_leaves_no_temporary_file(tmp_path) -> None:
    source = write_nifti(tmp_path / "in_T1w.nii.gz", head_phantom(), AFFINE)
    folder = tmp_path / "sim"
    folder.mkdir()
    command = [*CLI, "simulate", str(source), str(folder / "out.nii")]  # ~70 kB uncompressed
    done = _run(command, preexec_fn=_file_size_limit(8192))
    assert done.returncode == 1, done.stderr
    assert "File too large" in _error_line(done.stderr)
    assert list(folder.iterdir()) == []


# --- D16: messages that blame the wrong thing ------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        ("bids_name\trating\nsub-01_T1w\t3\n".encode("utf-16"), "UTF-16"),
        ("bids_name\trating\tcomment\nsub-01_T1w\t3\tcaf\u00e9\n".encode("latin-1"), "line 2"),
    ],
    ids=["empty", "utf16", "latin1"],
)
@pytest.mark.parametrize("with_bids", [False, True])
def test_d16_empty_or_mis_encoded_ratings_are_named_for_what_they_are(
    tmp_path, bids, encoder, capsys, content, words, with_bids
) -> None:
    """#43 D16: an empty file said "No columns to parse from file"; UTF-16 or Latin-1 ratings
    "'utf-8' codec can't decode byte", neither naming the file."""
    ratings = tmp_path / "ratings.tsv"
    ratings.write_bytes(content)
    args = ["train-qc", "--manifest", str(ratings), "--checkpoint", str(encoder)]
    args += ["--bids-dir", str(bids)] if with_bids else []
    assert main([*args, str(tmp_path / "qc")]) == 1
    line = _error_line(capsys.readouterr().err)
    assert str(ratings) in line and words in line and "codec" not in line, line


def test_d16_a_nifti_given_as_checkpoint_or_qc_head_is_called_a_nifti(
    tmp_path, bids, encoder, capsys
) -> None:
    """#43 D16: a .nii.gz as --checkpoint was said to hold "Python objects beyond tensors"."""
    volume = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    assert main(_score_args(bids, tmp_path / "a", volume)) == 2
    line = _error_line(capsys.readouterr().err)
    assert "a NIfTI volume (gzip), not an encoder file" in line and "Python objects" not in line
    assert main(_score_args(bids, tmp_path / "b", encoder, "--qc-head", str(volume))) == 2
    assert "a NIfTI volume (gzip), not a QC head file" in _error_line(capsys.readouterr().err)


def test_d16_threads_beyond_the_cores_are_lowered_with_a_warning(
    tmp_path, bids, encoder, capsys
) -> None:
    """#43 D16: `--threads 1000` under a memory limit was reported as an unreadable encoder."""
    from motionqc.runtime.devices import usable_cores

    args = _score_args(bids, tmp_path / "out", encoder, "--participant-label", "01")
    args[args.index("--threads") + 1] = "1000"
    assert main(args) == 0
    err = capsys.readouterr().err
    cores = usable_cores()
    assert f"warning: --threads 1000: more than the {cores} usable core(s); using {cores}" in err
    assert f", {cores} thread(s))" in err and "1000 thread(s)" not in err, err


def test_d16_a_missing_module_is_not_blamed_on_qc_head(
    tmp_path, bids, encoder, capsys, monkeypatch
) -> None:
    """#43 D16: any ImportError was reported as "--qc-head needs motionqc.models.qc_head"."""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # a broken install: tqdm unusable
    assert main(_score_args(bids, tmp_path / "out", encoder)) == 2
    line = _error_line(capsys.readouterr().err)
    assert "tqdm" in line and "--qc-head" not in line, line


# --- D17: accepted without a word -------------------------------------------------------------------


def test_d17_a_participant_label_without_images_is_warned(tmp_path, bids, encoder, capsys) -> None:
    """#43 D17: `--participant-label 01 99` scored sub-01 and said nothing of sub-99."""
    assert (
        main(_score_args(bids, tmp_path / "out", encoder, "--participant-label", "01", "99")) == 0
    )
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "--participant-label" in line]
    assert len(warned) == 1 and "warning: --participant-label 99: no sub-99" in warned[0], err


def test_d17_an_anat_folder_that_cannot_be_read_is_warned(tmp_path, encoder) -> None:
    """#43 D17: an unreadable anat/ folder was skipped without being listed."""
    study = tmp_path / "bids"
    for i, label in enumerate(["01", "02"]):
        write_nifti(
            study / f"sub-{label}/anat/sub-{label}_T1w.nii.gz", head_phantom(seed=i), AFFINE
        )
    (study / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    dangling = study / "sub-03" / "anat"  # a link to a disk that is not mounted
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "unmounted" / "anat")
    locked = study / "sub-02" / "anat"
    locked.chmod(0o000)
    try:
        done = _run(_unprivileged([*CLI, *_score_args(study, tmp_path / "out", encoder)]))
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "cannot be read" in line]
    assert any(f"{locked} (Permission denied)" in line for line in warnings), done.stderr
    assert any(f"{dangling} (No such file or directory)" in line for line in warnings), done.stderr
