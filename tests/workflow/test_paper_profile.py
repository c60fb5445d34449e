"""The paper profile's path on a manifest, end to end at CI size (issue 17).

A stand-in for the authors' restricted data (``motionqc.data.standin`` at 5 % of the AMPSCZ and HCP-EP
manifests, small 1 mm crops) goes through notebooks 01, 03, 04, 05, 06 and 07 with
``motionqc.runner --params``, as ``MOTIONQC_DATA_ROOT=DIR make reproduce PROFILE=paper
PARAMS=notebooks/params/standin.yaml`` does, at the smoke profile's sizes, in folders of its own.
An MR-ART-shaped BIDS tree then goes through ``manifest_from_mrart``, ``motionqc train-qc`` and
notebooks 04-05 with the stand-in run's encoder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from motionqc.data.bids import manifest_from_mrart
from motionqc.data.standin import write_standin

ROOT = Path(__file__).parents[2]
NOTEBOOKS = [
    "01_data_curation",
    "03_pretraining",
    "04_embedding_transfer",
    "05_scratch_baseline",
    "06_efficiency",
    "07_cortical_thickness",
]


def _module(module: str, *args: str, env: dict[str, str]) -> None:
    """Run ``python -m module args`` in the repository; fail with the end of its output."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _notebooks(params: Path, names: list[str], env: dict[str, str]) -> None:
    """Run notebooks under the smoke profile with a parameters file, as ``make reproduce PARAMS=``."""
    paths = [str(ROOT / "notebooks" / f"{n}.ipynb") for n in names]
    _module("motionqc.runner", "--profile", "smoke", "--params", str(params), *paths, env=env)


def _printed(nb: Path) -> str:
    cells = nbformat.read(nb, as_version=4).cells
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("paper_profile")
    data = base / "standin"
    manifests = [ROOT / "data_manifest" / "ampscz.tsv", ROOT / "data_manifest" / "hcpep.tsv"]
    write_standin(manifests, data, 0.05, grid=(64, 72, 64), progress=False)
    params = base / "standin_ci.yaml"
    params.write_text(
        "environment:\n"
        f"  MOTIONQC_FIGURES: {base / 'figures'}\n"
        f"  MOTIONQC_CHECKPOINTS: {base / 'checkpoints'}\n"
        "manifest: ${MOTIONQC_DATA_ROOT}/standin_manifest.tsv\n"
        "device: cpu\n"
        # motion per batch, as the paper profile trains on GPUs (here on the CPU, at 4 mm)
        "03_pretraining:\n  draws: 1\n  motion: batch\n  num_workers: 0\n"
        "07_cortical_thickness:\n  thickness_manifest: ${MOTIONQC_DATA_ROOT}/standin_manifest.tsv\n"
    )
    env = {**os.environ, "MOTIONQC_DATA_ROOT": str(data)}
    env.pop("MOTIONQC_FIGURES", None)
    env.pop("MOTIONQC_CHECKPOINTS", None)
    _notebooks(params, NOTEBOOKS, env)
    return {"data": data, "figures": base / "figures", "checkpoints": base / "checkpoints"}


def test_notebook_01_keeps_the_manifests_roles_and_splits(standin_run) -> None:
    manifest = pd.read_csv(standin_run["data"] / "standin_manifest.tsv", sep="\t")
    split = pd.read_csv(standin_run["figures"] / "tables" / "data_split.csv")
    transfer = manifest[manifest["role"].isin(["transfer", "transfer_test_added"])]
    # the authors' files: transfer train, val, and test + added test are the poster's rows
    want = {
        "Train": (transfer["split"] == "train").sum(),
        "Test": (transfer["split"] == "val").sum(),
        "Validation": (transfer["split"] == "test").sum(),
    }
    assert dict(zip(split["split"], split["total"], strict=True)) == want
    printed = _printed(ROOT / "build" / "notebooks" / "smoke" / "01_data_curation.ipynb")
    assert "manifest's roles" in printed


def test_notebook_03_pretrains_on_the_pool_and_tests_on_its_test_split(standin_run) -> None:
    manifest = pd.read_csv(standin_run["data"] / "standin_manifest.tsv", sep="\t")
    pool = manifest[manifest["role"] == "synthetic_pool"]
    metrics = pd.read_csv(standin_run["figures"] / "tables" / "pretrain_metrics.csv")
    n_test = int(metrics.set_index("split").loc["test", "n"])
    assert n_test == 8 * (pool["split"] == "test").sum()  # 8 TorchIO scores, 1 draw per head
    assert (standin_run["checkpoints"] / "smoke" / "encoder.pt").is_file()
    printed = _printed(ROOT / "build" / "notebooks" / "smoke" / "03_pretraining.ipynb")
    counts = pool["split"].value_counts().to_dict()
    assert f"synthetic pool {counts}" in printed
    assert re.search(r"^motion\s+batch$", printed, re.M)  # trained on new samples every step


def test_notebooks_04_05_train_on_the_manifests_ratings(standin_run) -> None:
    manifest = pd.read_csv(standin_run["data"] / "standin_manifest.tsv", sep="\t")
    rated = manifest[
        manifest["role"].isin(["transfer", "transfer_test_added"]) & manifest["qc_score"].notna()
    ].set_index("volume_id")
    qc = pd.read_csv(standin_run["figures"] / "tables" / "04_qc_demo_set.csv")
    assert set(qc["volume_id"]) <= set(rated.index) and len(qc) >= 10
    assert qc["qc_score"].tolist() == [int(rated.loc[v, "qc_score"]) for v in qc["volume_id"]]
    assert qc["split"].tolist() == [rated.loc[v, "split"] for v in qc["volume_id"]]
    scratch = pd.read_csv(
        standin_run["figures"] / "tables" / "qc_predictions_scratch.tsv", sep="\t"
    )
    assert set(scratch["volume_id"]) <= set(qc.loc[qc["split"] == "test", "volume_id"])
    efficiency = pd.read_csv(standin_run["figures"] / "tables" / "efficiency.csv")
    assert len(efficiency) >= 3


def test_notebook_07_fits_the_manifests_thickness_on_predicted_motion(standin_run) -> None:
    manifest = pd.read_csv(standin_run["data"] / "standin_manifest.tsv", sep="\t")
    model = pd.read_csv(standin_run["figures"] / "tables" / "thickness_motion_model.csv")
    assert model.loc[0, "manifest"] == "standin_manifest.tsv"
    assert model.loc[0, "n"] == manifest["thickness"].notna().sum() == len(manifest)
    assert model.loc[0, "n_groups"] == manifest["site"].nunique()  # site: the random intercept
    printed = _printed(ROOT / "build" / "notebooks" / "smoke" / "07_cortical_thickness.ipynb")
    assert f"standin_manifest.tsv: {len(manifest)} volumes with a thickness" in printed
    assert "the synthetic table stands in" not in printed


def test_an_mrart_manifest_goes_through_train_qc_and_notebooks_04_05(
    standin_run, mrart: Path, tmp_path: Path
) -> None:
    """Three scans per subject: train-qc and the notebooks both keep each person in one split."""
    manifest = manifest_from_mrart(mrart)
    tsv = tmp_path / "mrart.tsv"
    manifest.to_csv(tsv, sep="\t", index=False)
    encoder = standin_run["checkpoints"] / "smoke" / "encoder.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONQC_")}
    qc_args = ["--manifest", str(tsv), "--checkpoint", str(encoder), str(tmp_path / "qc")]
    _module("motionqc.app.cli", "train-qc", *qc_args, "--seeds", "1", env=env)
    splits = pd.read_csv(tmp_path / "qc" / "splits.tsv", sep="\t")
    assert sorted(splits["volume_id"]) == sorted(manifest["volume_id"])
    assert (splits.groupby("subject")["split"].nunique() == 1).all()
    assert set(splits["split"]) == {"train", "val", "test"}

    (tmp_path / "checkpoints" / "smoke").mkdir(parents=True)
    shutil.copyfile(encoder, tmp_path / "checkpoints" / "smoke" / "encoder.pt")
    params = tmp_path / "mrart.yaml"
    params.write_text(
        "environment:\n"
        f"  MOTIONQC_FIGURES: {tmp_path / 'figures'}\n"
        f"  MOTIONQC_CHECKPOINTS: {tmp_path / 'checkpoints'}\n"
        f"manifest: {tsv}\n"
    )
    _notebooks(params, NOTEBOOKS[2:4], env)
    qc = pd.read_csv(tmp_path / "figures" / "tables" / "04_qc_demo_set.csv")
    rated = manifest.set_index("volume_id")
    assert sorted(qc["volume_id"]) == sorted(manifest["volume_id"])
    assert qc["qc_score"].tolist() == [int(rated.loc[v, "qc_score"]) for v in qc["volume_id"]]
    # one manifest, one rule: the notebooks' split is train-qc's, volume for volume
    assert (
        qc.set_index("volume_id")["split"]
        .sort_index()
        .equals(splits.set_index("volume_id")["split"].sort_index())
    )
    scratch = pd.read_csv(tmp_path / "figures" / "tables" / "qc_predictions_scratch.tsv", sep="\t")
    assert set(scratch["volume_id"]) == set(qc.loc[qc["split"] == "test", "volume_id"])
    printed = _printed(ROOT / "build" / "notebooks" / "smoke" / "05_scratch_baseline.ipynb")
    assert f"median balanced accuracy (ratings of {tsv})" in printed
