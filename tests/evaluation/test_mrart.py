"""motionqc.evaluation.mrart: MR-ART scored through ``motionqc score`` and compared with its ratings.

The tree is MR-ART-shaped (``sub-*/anat/sub-*_acq-{standard,headmotion1,headmotion2}_T1w``,
``derivatives/scores.tsv`` with MR-ART's 1 good … 3 bad ratings): the three sample heads at 2 mm,
the still scans motion-free, the moving ones corrupted by k-space motion of known score
(``simulate_motion`` with ``sample_motion``'s parameters), each rated from its own known score.
Every reported number is checked against one computed here from the written table (scipy,
pandas), and the table against what the tree was built from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_nifti
from scipy.stats import spearmanr

from motionqc.data.volumes import preprocess
from motionqc.evaluation.mrart import (
    CONDITIONS,
    TABLE_COLUMNS,
    bootstrap_spearman,
    main,
    summarise,
)
from motionqc.models.encoder import save_encoder
from motionqc.models.sfcn import SFCN
from motionqc.physics.motion import simulate_motion
from motionqc.physics.score import score_motion
from motionqc.synthetic.parameters import sample_motion

FAST = ["--device", "cpu", "--num-workers", "0", "--threads", "1", "--no-progress"]
# Known motion (mm) per subject and condition. Subject 3's first moving scan barely moved (rated
# 1, like a still scan) and subject 5's second moved less than 2 mm (rated 2): the ratings follow
# the motion, not the condition.
MOTION = {
    "standard": [0.0] * 6,
    "headmotion1": [0.8, 1.2, 1.5, 0.3, 1.0, 1.4],
    "headmotion2": [2.6, 3.2, 3.8, 3.0, 3.4, 1.6],
}


def mrart_rating(score: float) -> int:
    """MR-ART's direction: 1 = good, 3 = bad."""
    return 1 if score < 0.5 else 2 if score < 2.0 else 3


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, sample: pd.DataFrame) -> tuple[Path, dict]:
    """The MR-ART-shaped tree and, per bids_name, its subject, condition, score and rating."""
    root = tmp_path_factory.mktemp("ds004173")
    heads = sample["path"].tolist()
    truth, lines = {}, ["bids_name\tscore"]
    for i in range(6):
        sub = f"{100 + i:06d}"
        image = preprocess(heads[i % len(heads)], 2.0, (80, 96, 80), normalise=False)
        data = image.data[0]
        for condition in CONDITIONS:
            target = MOTION[condition][i]
            if target > 0:
                motion = sample_motion(
                    target, seed=10 * i + len(condition), affine=image.affine, shape=data.shape
                )
                moved = simulate_motion(
                    data, motion["degrees"], motion["translation"], motion["times"], image.affine
                )
                score = score_motion(
                    motion["degrees"], motion["translation"], image.affine, data.shape
                )
            else:
                moved, score = data, 0.0
            name = f"sub-{sub}_acq-{condition}_T1w"
            write_nifti(
                root / f"sub-{sub}" / "anat" / f"{name}.nii.gz",
                np.asarray(moved, np.float32),
                image.affine,
            )
            rating = mrart_rating(float(score))
            truth[name] = {
                "subject": sub,
                "condition": condition,
                "score": float(score),
                "rating": rating,
            }
            lines.append(f"{name}\t{rating}")
    (root / "derivatives").mkdir()
    (root / "derivatives" / "scores.tsv").write_text("\n".join(lines) + "\n")
    (root / "dataset_description.json").write_text('{"Name": "MR-ART", "BIDSVersion": "1.9.0"}')
    return root, truth


@pytest.fixture(scope="module")
def small_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised SFCN at the smoke geometry, as tests/app use: plumbing only."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    return save_encoder(path, SFCN(), spacing_mm=4.0, shape=(40, 48, 40), info={"note": "random"})


def _run(tree: tuple[Path, dict], out: Path, *args: str) -> tuple[pd.DataFrame, dict, Path]:
    root, _ = tree
    assert main([str(root), str(out), *FAST, *args]) == 0
    table = pd.read_csv(
        out / "mrart_scores.tsv", sep="\t", dtype={"bids_name": str, "subject": str}
    )
    summary = json.loads((out / "mrart_summary.json").read_text())
    return table, summary, out


@pytest.fixture(scope="module")
def plumbing(tree, small_encoder, tmp_path_factory) -> tuple[pd.DataFrame, dict, Path]:
    """The command run with the small random encoder."""
    out = tmp_path_factory.mktemp("mrart_out")
    return _run(tree, out, "--checkpoint", str(small_encoder), "--n-boot", "500")


def test_scores_table_is_the_tree_and_the_derivative(tree, plumbing) -> None:
    _, truth = tree
    table, summary, out = plumbing
    assert tuple(table.columns) == TABLE_COLUMNS
    assert sorted(table["bids_name"]) == sorted(truth)
    for row in table.itertuples():
        known = truth[row.bids_name]
        assert (row.subject, row.condition, row.rating) == (
            known["subject"],
            known["condition"],
            known["rating"],
        ), row.bids_name
        assert f"_acq-{row.condition}_" in row.bids_name
    # The ratings are MR-ART's as written in scores.tsv (1 good ... 3 bad), not the 1-4 qc_score.
    assert set(table["rating"]) == {1, 2, 3}
    scored = pd.read_csv(out / "motionqc" / "motion_T1w.tsv", sep="\t", dtype={"bids_name": str})
    assert (scored["status"] == "ok").all() and len(scored) == 18
    derivative = scored.set_index("bids_name")["motion_mm"]
    np.testing.assert_allclose(table["motion_mm"], derivative[table["bids_name"]].to_numpy())
    assert summary["encoder"]["checkpoint"].endswith("encoder.pt")
    assert summary["n_volumes"] == summary["n_scored"] == summary["n_rated_scored"] == 18
    assert summary["n_subjects"] == 6


def test_summary_matches_independent_computation(plumbing) -> None:
    table, summary, out = plumbing
    expected = spearmanr(table["motion_mm"], table["rating"])
    assert summary["spearman_rho"] == pytest.approx(expected.statistic, abs=1e-12)
    assert summary["spearman_p"] == pytest.approx(expected.pvalue, rel=1e-9)
    low, high = summary["spearman_ci95"]
    assert -1 <= low <= high <= 1
    assert summary["bootstrap"] == {"n_boot": 500, "seed": 0, "resampled": "subjects"}
    stats = table.groupby("condition")["motion_mm"].agg(["count", "mean", "median"])
    ratings = table.groupby("condition")["rating"].mean()
    assert list(summary["conditions"]) == list(CONDITIONS)
    for condition, row in summary["conditions"].items():
        assert row["n_volumes"] == row["n_scored"] == stats.at[condition, "count"] == 6
        assert row["mean_motion_mm"] == pytest.approx(stats.at[condition, "mean"], abs=1e-12)
        assert row["median_motion_mm"] == pytest.approx(stats.at[condition, "median"], abs=1e-12)
        assert row["mean_rating"] == pytest.approx(ratings[condition])
    wide = table.pivot(index="subject", columns="condition", values="motion_mm")
    below = (wide["standard"] < wide["headmotion1"]) & (wide["standard"] < wide["headmotion2"])
    assert summary["still_below_both_moving_share"] == pytest.approx(below.mean())
    assert summary["still_below_headmotion2_share"] == pytest.approx(
        (wide["standard"] < wide["headmotion2"]).mean()
    )
    flat = pd.read_csv(out / "mrart_summary.csv").set_index("metric")["value"]
    assert float(flat["spearman_rho"]) == pytest.approx(summary["spearman_rho"])
    assert float(flat["spearman_ci95.0"]) == pytest.approx(low)
    assert float(flat["conditions.headmotion2.mean_motion_mm"]) == pytest.approx(
        stats.at["headmotion2", "mean"]
    )


def test_released_encoder_ranks_the_simulated_motion(tree, tmp_path: Path, capsys) -> None:
    """No --checkpoint: the encoder that ships, through ``motionqc score``."""
    import hashlib

    from motionqc.models.encoder import released_encoder_path

    _, truth = tree
    table, summary, _ = _run(tree, tmp_path / "out", "--n-boot", "500")
    released = released_encoder_path()
    assert Path(summary["encoder"]["checkpoint"]) == released
    assert summary["encoder"]["sha256"] == hashlib.sha256(released.read_bytes()).hexdigest()
    printed = capsys.readouterr().out
    assert "Spearman rho(motion_mm, MR-ART rating)" in printed and "1 = clinically good" in printed
    # More simulated motion, a worse MR-ART rating, a higher predicted score: rho > 0.
    assert summary["spearman_rho"] > 0.5
    assert summary["spearman_ci95"][0] > 0
    known = table["bids_name"].map(lambda n: truth[n]["score"])
    assert spearmanr(table["motion_mm"], known).statistic > 0.5
    means = [summary["conditions"][c]["mean_motion_mm"] for c in CONDITIONS]
    assert means[0] < means[1] < means[2]
    assert summary["still_below_both_moving_share"] >= 4 / 6


def test_summarise_on_a_table_of_known_numbers() -> None:
    """Three subjects; the still scan of subject c scores above its first moving scan."""
    rows = [
        ("a", "standard", 1, 0.5),
        ("a", "headmotion1", 2, 1.0),
        ("a", "headmotion2", 3, 2.0),
        ("b", "standard", 1, 0.7),
        ("b", "headmotion1", 2, 1.5),
        ("b", "headmotion2", 3, 3.0),
        ("c", "standard", 1, 1.2),
        ("c", "headmotion1", 1, 0.9),
        ("c", "headmotion2", 2, 2.5),
    ]
    table = pd.DataFrame(rows, columns=["subject", "condition", "rating", "motion_mm"])
    table.insert(0, "bids_name", [f"sub-{s}_acq-{c}_T1w" for s, c, *_ in rows])
    summary = summarise(table, n_boot=200)
    assert summary["conditions"]["standard"]["mean_motion_mm"] == pytest.approx(0.8)
    assert summary["conditions"]["headmotion1"]["median_motion_mm"] == pytest.approx(1.0)
    assert summary["conditions"]["headmotion2"]["mean_rating"] == pytest.approx(8 / 3)
    assert summary["still_below_both_moving_share"] == pytest.approx(2 / 3)
    assert summary["still_below_headmotion2_share"] == pytest.approx(1.0)
    assert summary["spearman_rho"] > 0.8  # worse MR-ART rating, more motion
    # Rated on the manifest's 1-4 scale (4 = best) instead, the sign flips: the direction is kept.
    flipped = table.assign(rating=table["rating"].map({1: 4, 2: 3, 3: 2}))
    assert summarise(flipped, n_boot=10)["spearman_rho"] == pytest.approx(-summary["spearman_rho"])


def test_bootstrap_resamples_subjects_not_volumes() -> None:
    """One subject: every draw is that subject, so the interval collapses onto its rho
    (resampling its volumes instead would spread it)."""
    one = pd.DataFrame(
        {
            "subject": ["a"] * 6,
            "rating": [1, 1, 2, 2, 3, 3],
            "motion_mm": [0.4, 1.1, 0.9, 2.0, 1.5, 3.0],
        }
    )
    rho = spearmanr(one["motion_mm"], one["rating"]).statistic
    assert bootstrap_spearman(one, n_boot=50) == pytest.approx((rho, rho))
    two = pd.concat([one, one.assign(subject="b", motion_mm=one["motion_mm"][::-1].to_numpy())])
    low, high = bootstrap_spearman(two, n_boot=300, seed=3)
    assert low < high
    assert bootstrap_spearman(two, n_boot=300, seed=3) == (low, high)


def test_participant_label_and_missing_ratings(tree, small_encoder, tmp_path: Path, capsys) -> None:
    table, summary, out = _run(
        tree,
        tmp_path / "out",
        "--checkpoint",
        str(small_encoder),
        "--n-boot",
        "50",
        "--participant-label",
        "000101",
        "sub-000104",
    )
    assert sorted(set(table["subject"])) == ["000101", "000104"] and len(table) == 6
    scored = pd.read_csv(out / "motionqc" / "motion_T1w.tsv", sep="\t", dtype={"bids_name": str})
    assert sorted(scored["bids_name"]) == sorted(table["bids_name"])
    bare = tmp_path / "bare"
    (bare / "sub-01" / "anat").mkdir(parents=True)
    (bare / "sub-01" / "anat" / "sub-01_acq-standard_T1w.nii.gz").write_bytes(
        next(tree[0].glob("sub-*/anat/*standard_T1w.nii.gz")).read_bytes()
    )
    capsys.readouterr()
    assert main([str(bare), str(tmp_path / "bare_out"), *FAST]) == 2
    assert "scores.tsv" in capsys.readouterr().err
