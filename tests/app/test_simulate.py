"""motionqc.app.simulate: what `motionqc simulate` refuses to overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import head_phantom, write_nifti

from motionqc.app.cli import main


def test_simulate_never_replaces_its_input_or_a_foreign_sidecar(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """#43 D5: `simulate a.nii.gz a.nii.gz` replaced the scan; `X.nii` beside `X.nii.gz`
    overwrote the scanner's `X.json`."""
    scan = write_nifti(tmp_path / "X.nii.gz", head_phantom((16, 18, 14)))
    original = scan.read_bytes()
    for same in (scan, tmp_path / "." / "X.nii.gz"):
        assert main(["simulate", str(scan), str(same)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is the input" in err, err
        assert scan.read_bytes() == original
    assert main(["simulate", str(scan), str(scan), "--force"]) == 1  # never, even forced
    assert scan.read_bytes() == original
    capsys.readouterr()

    scanner = tmp_path / "X.json"  # the scanner's sidecar of X.nii.gz
    scanner.write_text('{"RepetitionTime": 2.3}\n')
    assert main(["simulate", str(scan), str(tmp_path / "X.nii")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "X.json" in err and "--force" in err, err
    assert scanner.read_text() == '{"RepetitionTime": 2.3}\n'
    assert not (tmp_path / "X.nii").exists()
    assert main(["simulate", str(scan), str(tmp_path / "X.nii"), "--force"]) == 0
    assert json.loads(scanner.read_text())["GeneratedBy"]["Name"] == "motionqc"

    # an existing volume that motionqc did not simulate is refused too; its own output is not
    other = write_nifti(tmp_path / "Y.nii.gz", head_phantom((16, 18, 14), seed=1))
    kept = other.read_bytes()
    assert main(["simulate", str(scan), str(other)]) == 1
    assert "--force" in capsys.readouterr().err and other.read_bytes() == kept
    out = tmp_path / "sim.nii.gz"
    assert main(["simulate", str(scan), str(out), "--seed", "1"]) == 0
    assert main(["simulate", str(scan), str(out), "--seed", "2"]) == 0  # a re-run replaces it
