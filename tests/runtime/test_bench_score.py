"""benchmarks/bench_score.py at a tiny size: it measures the encoder that ships, at the grid its
file records, and keeps a reference row per section (ratios within the section, same run)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from motionqc.models.encoder import load_encoder, released_encoder_path, save_encoder
from motionqc.models.sfcn import SFCN

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--quick", "--n-volumes", "2", "--workers", "0"]


def bench(out: Path, *args: str) -> pd.DataFrame:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_score.py"), *TINY, "--out", str(out)]
        + list(args),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out, dtype={"shape": str, "channels": str})


def check_ratios(table: pd.DataFrame) -> None:
    for _, part in table.groupby("section"):
        assert part["config"].iloc[0].startswith("reference")
        assert part["config"].iloc[1].startswith("pipeline")
        assert part["config"].iloc[2].startswith("forward-only")
        ratio = part["volumes_per_min"] / part["volumes_per_min"].iloc[0]
        pd.testing.assert_series_equal(part["ratio_vs_reference"], ratio, check_names=False)


def test_the_released_section_runs_the_grid_its_encoder_file_records(tmp_path: Path) -> None:
    """An encoder of a grid and width nothing else uses: the rows must carry exactly those."""
    torch.manual_seed(0)
    model = SFCN(channels=(8, 8, 16, 16, 16, 8))
    with torch.no_grad():  # a skewed bin distribution: its temperature moves the decoded score
        model.classifier.bias.copy_(torch.linspace(0.0, 4.0, model.n_outputs))
    encoder = save_encoder(
        tmp_path / "odd.pt",
        model,
        spacing_mm=5.0,
        shape=(32, 40, 32),
        input_intensity="percentile",
        temperature=0.7,
    )
    table = bench(tmp_path / "bench.csv", "--models", "released", "--encoder", str(encoder))
    assert set(table["section"]) == {"released"} and len(table) == 3
    assert (table["shape"] == "32x40x32").all() and (table["spacing_mm"] == 5.0).all()
    assert (table["channels"] == "8-8-16-16-16-8").all()
    assert (table["input_intensity"] == "percentile").all()
    assert (table["encoder_sha256"] == hashlib.sha256(encoder.read_bytes()).hexdigest()).all()
    assert (table["accuracy_geometry"] == "5 mm 32x40x32").all()
    # the reference applies the file's scaling and temperature as the pipeline does
    assert table["max_abs_diff_vs_reference_mm"].max() < 0.05
    check_ratios(table)


def test_default_run_measures_the_shipped_encoder_beside_a_random_sfcn(tmp_path: Path) -> None:
    meta = load_encoder(released_encoder_path())[1]
    table = bench(
        tmp_path / "bench.csv",
        *("--models", "released", "random", "--spacing", "4", "--shape", "40", "48", "40"),
    )
    released = table[table["section"] == "released"]
    random = table[table["section"] == "random"]
    assert len(released) == len(random) == 3
    assert (released["shape"] == "x".join(map(str, meta["shape"]))).all()
    assert (released["spacing_mm"] == meta["spacing_mm"]).all()
    assert (released["encoder"] == str(released_encoder_path())).all()
    assert released["accuracy_model"].iloc[0].startswith("trained encoder")
    assert (random["shape"] == "40x48x40").all() and (random["spacing_mm"] == 4.0).all()
    assert (random["model"] == "random init (throughput)").all()
    assert table["max_abs_diff_pipeline_mm"].max() < 0.05
    check_ratios(table)


@pytest.mark.parametrize("flag", ["--models", "--encoder"])
def test_help_lists_the_options(flag: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_score.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert flag in done.stdout
