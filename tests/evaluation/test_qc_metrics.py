"""motionqc.evaluation.qc_metrics: the poster's QC table recomputed from the authors' predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from motionqc.evaluation.poster import POSTER_QC_RESULTS, POSTER_QC_SEED_BA
from motionqc.evaluation.qc_metrics import (
    METRIC_COLUMNS,
    _median_balanced_accuracy,
    authors_predictions,
    authors_seed_table,
    bootstrap_difference,
    median_table,
    qc_metrics,
    recompute_poster,
    seed_table,
    summed_confusion,
    write_poster_recomputed,
)


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    return authors_predictions()


def test_authors_predictions_layout(predictions: pd.DataFrame) -> None:
    assert list(predictions.columns) == ["setting", "seed", "volume_id", "y_true", "y_pred"]
    assert len(predictions) == 2240
    per_run = predictions.groupby(["setting", "seed"])["volume_id"].apply(frozenset)
    assert per_run.nunique() == 1 and len(per_run.iloc[0]) == 224
    one = predictions[(predictions["setting"] == "transfer") & (predictions["seed"] == 1)]
    assert one["y_true"].value_counts().sort_index().tolist() == [9, 90, 125]


def test_recomputation_reproduces_the_authors_seed_metrics() -> None:
    seeds, _ = recompute_poster()
    authors = authors_seed_table()
    assert seeds[["setting", "seed"]].equals(authors[["setting", "seed"]])
    np.testing.assert_allclose(
        seeds[list(METRIC_COLUMNS)], authors[list(METRIC_COLUMNS)], atol=1e-3
    )
    # in fact exactly, up to floating-point rounding
    np.testing.assert_allclose(
        seeds[list(METRIC_COLUMNS)], authors[list(METRIC_COLUMNS)], atol=1e-12
    )
    for setting, values in POSTER_QC_SEED_BA.items():
        ba = seeds.loc[seeds["setting"] == setting, "balanced_accuracy"]
        np.testing.assert_allclose(ba, values, atol=5e-4)


def test_medians_reproduce_the_poster_to_two_decimals() -> None:
    _, medians = recompute_poster()
    assert medians["setting"].tolist() == ["transfer", "scratch"]
    assert list(medians.columns) == ["setting", *METRIC_COLUMNS]
    ours = medians.set_index("setting")[list(METRIC_COLUMNS)].round(2)
    poster = POSTER_QC_RESULTS.set_index("setting")[list(METRIC_COLUMNS)]
    pd.testing.assert_frame_equal(ours, poster)
    # the poster's row is a per-column median, not any one seed's row
    seeds, _ = recompute_poster()
    rows = seeds.set_index("setting")[list(METRIC_COLUMNS)].round(6)
    for setting in ("transfer", "scratch"):
        median_row = medians.set_index("setting").loc[setting].round(6).tolist()
        assert median_row not in rows.loc[setting].values.tolist()


def test_write_poster_recomputed(tmp_path: Path) -> None:
    path = write_poster_recomputed(tmp_path / "t" / "poster_qc_recomputed.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == ["setting", *METRIC_COLUMNS]
    pd.testing.assert_frame_equal(table.round(2), POSTER_QC_RESULTS)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_equal_sklearn_on_random_labels() -> None:
    rng = np.random.default_rng(7)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        y_true = rng.integers(0, 3, n)
        y_pred = rng.integers(0, 3 if trial % 2 else 2, n)  # some runs never predict class 2
        out = qc_metrics(y_true, y_pred)
        assert list(out) == list(METRIC_COLUMNS)
        assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        f1 = f1_score(y_true, y_pred, labels=[0, 1, 2], average=None, zero_division=0)
        assert [out["f1_c0"], out["f1_c1"], out["f1_c2"]] == pytest.approx(f1.tolist())


def _random_predictions(seed: int, settings=("a", "b"), n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    frames = [
        pd.DataFrame(
            {
                "setting": setting,
                "seed": s,
                "volume_id": [f"v{i}" for i in range(n)],
                "y_true": y_true,
                "y_pred": np.where(rng.random(n) < 0.5, y_true, rng.integers(0, 3, n)),
            }
        )
        for setting in settings
        for s in (1, 2, 3)
    ]
    return pd.concat(frames, ignore_index=True)


def test_seed_and_median_tables_for_any_setting_names() -> None:
    preds = _random_predictions(0, settings=("ours_transfer", "ours_scratch", "x"))
    seeds = seed_table(preds)
    assert seeds["setting"].tolist() == ["ours_transfer"] * 3 + ["ours_scratch"] * 3 + ["x"] * 3
    row = seeds.iloc[4]
    sub = preds[(preds["setting"] == "ours_scratch") & (preds["seed"] == 2)]
    assert row["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(sub["y_true"], sub["y_pred"])
    )
    medians = median_table(seeds)
    assert medians["setting"].tolist() == ["ours_transfer", "ours_scratch", "x"]
    # Each column's median on its own, checked on values whose medians are known by hand: the
    # median row of "a" (0.5, 0.3) is no single seed's row.
    hand = pd.DataFrame(
        {"setting": ["a"] * 3 + ["b"] * 2, "seed": [0, 1, 2, 0, 1]}
        | {c: [0.9, 0.5, 0.1, 0.2, 0.4] for c in METRIC_COLUMNS}
    )
    hand.loc[:2, METRIC_COLUMNS[-1]] = [0.3, 0.8, 0.2]
    got = median_table(hand).set_index("setting")
    assert got.loc["a", METRIC_COLUMNS[0]] == pytest.approx(0.5)
    assert got.loc["a", METRIC_COLUMNS[-1]] == pytest.approx(0.3)
    assert got.loc["b", METRIC_COLUMNS[0]] == pytest.approx(0.3)  # even count: the mean of the two


def test_summed_confusion(predictions: pd.DataFrame) -> None:
    for setting in ("transfer", "scratch"):
        table = summed_confusion(predictions, setting)
        rows = predictions[predictions["setting"] == setting]
        expected = sum(
            confusion_matrix(g["y_true"], g["y_pred"], labels=[0, 1, 2])
            for _, g in rows.groupby("seed")
        )
        np.testing.assert_array_equal(table.to_numpy(), expected)
        assert table.to_numpy().sum() == 5 * 224
        assert table.sum(axis=1).tolist() == [45, 450, 625]
    assert summed_confusion(predictions, "scratch")[0].sum() == 0  # scratch never predicts 1/2
    with pytest.raises(ValueError, match="no predictions"):
        summed_confusion(predictions, "absent")


def test_vectorised_balanced_accuracy_matches_sklearn_on_resamples(
    predictions: pd.DataFrame,
) -> None:
    wide = predictions[predictions["setting"] == "transfer"].pivot(
        index="volume_id", columns="seed", values="y_pred"
    )
    truth = predictions.drop_duplicates("volume_id").set_index("volume_id")["y_true"]
    y, x = truth.loc[wide.index].to_numpy(), wide.to_numpy()
    rng = np.random.default_rng(3)
    for _ in range(5):
        idx = rng.integers(0, len(y), len(y))
        weights = np.bincount(idx, minlength=len(y))[None, :].astype(float)
        expected = np.median([balanced_accuracy_score(y[idx], x[idx, k]) for k in range(5)])
        assert _median_balanced_accuracy(weights, y, x)[0] == pytest.approx(expected)


def test_bootstrap_difference(predictions: pd.DataFrame) -> None:
    result = bootstrap_difference(predictions, n_boot=500, seed=0)
    assert result == bootstrap_difference(predictions, n_boot=500, seed=0)  # deterministic
    assert result != bootstrap_difference(predictions, n_boot=500, seed=1)
    _, medians = recompute_poster()
    ba = medians.set_index("setting")["balanced_accuracy"]
    assert result["estimate"] == pytest.approx(ba["transfer"] - ba["scratch"])
    assert result["ci_low"] < result["estimate"] < result["ci_high"]
    assert result["n_volumes"] == 224 and result["n_boot"] == 500
    assert 0.0 <= result["p_le_0"] <= 1.0
    # swapping the settings mirrors the estimate and the interval
    swapped = bootstrap_difference(predictions, a="scratch", b="transfer", n_boot=500, seed=0)
    assert swapped["estimate"] == pytest.approx(-result["estimate"])
    assert swapped["ci_low"] == pytest.approx(-result["ci_high"])


def test_bootstrap_refuses_unpaired_predictions() -> None:
    preds = _random_predictions(1)
    unpaired = preds[~((preds["setting"] == "b") & (preds["volume_id"] == "v0"))]
    with pytest.raises(ValueError, match="different volumes|every seed"):
        bootstrap_difference(unpaired, a="a", b="b", n_boot=10)
    with pytest.raises(ValueError, match="no predictions"):
        bootstrap_difference(preds, a="a", b="absent", n_boot=10)
    ok = bootstrap_difference(preds, a="a", b="b", n_boot=50, seed=2)
    assert ok["n_volumes"] == 50
