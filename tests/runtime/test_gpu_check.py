"""benchmarks/gpu_check.sh: its CPU-side preparation, and its code run where TorchIO is absent.

The GPU machine has PyTorch but not TorchIO, nibabel or SimpleITK. These tests prepare the inputs
as ``make gpu-prepare`` does, then run the check's Python on this CPU in a child process in which
importing any of those three fails, at a coarse grid and a few steps: every section must run and
write its rows, and the torch motion path must match the SimpleITK path the preparation used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

BLOCK = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchio", "SimpleITK", "nibabel"):
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_check.py", *sys.argv[1:]]
runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
"""


def test_gpu_check_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")], check=False)
    assert done.returncode == 0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gpu_prepare import prepare

    return prepare(tmp_path_factory.mktemp("gpu"), rows=12, reference_rows=1, loader_reps=1)


def test_preparation_holds_what_the_device_needs(prepared: Path) -> None:
    inputs = torch.load(prepared, map_location="cpu", weights_only=True)
    assert inputs["heads"].shape == (3, 160, 192, 160) and inputs["heads"].dtype == torch.float16
    assert len(inputs["label"]) == 12 and inputs["degrees"].shape[:2] == inputs["times"].shape
    assert prepared.stat().st_size < 40 * 2**20  # travels with the working tree (<= 64 MiB)
    assert inputs["reference"]["outputs"].shape == (1, 80, 96, 80)


def test_gpu_check_runs_without_torchio_nibabel_or_simpleitk(
    prepared: Path, tmp_path: Path
) -> None:
    args = [
        "--inputs", str(prepared), "--out", str(tmp_path), "--device", "cpu", "--scale", "4",
        "--motion-batches", "1", "2", "--train-batches", "2", "--train-steps", "2",
        "--paper-steps", "3", "--paper-batch", "2", "--score-batches", "2",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", BLOCK, *args],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "bench_gpu.csv")
    assert set(table["section"]) == {"machine", "motion", "train step", "paper path", "scoring"}
    rates = table[table["unit"] == "vol/s"]
    assert (rates["value"] > 0).all() and len(rates) >= 5
    (rel,) = table.loc[table["unit"] == "relative L2", "value"]
    assert rel <= 1e-4  # the torch path reproduces the SimpleITK path the CPU machine used
    losses = table[(table["section"] == "paper path") & (table["unit"] == "KL")]["value"]
    assert len(losses) == 2 and losses.notna().all()
