"""Severity targeting, the authors' sampler, the parameter table and the synthetic Dataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchio as tio

from motionqc.data.volumes import load_volume
from motionqc.physics.motion import simulate_motion
from motionqc.physics.score import score_motion
from motionqc.synthetic.motion_sets import (
    SyntheticMotionDataset,
    build_parameter_table,
    export_nifti,
    read_parameter_table,
    split_sources,
)
from motionqc.synthetic.parameters import sample_authors_motion, sample_motion

AFFINE = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
SHAPE = (91, 109, 91)


@pytest.mark.parametrize("target", [0.05, 0.3, 1.0, 2.5, 4.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_motion_hits_target(target, seed):
    p = sample_motion(target, seed, affine=AFFINE, shape=SHAPE)
    assert 2 <= p["n"] < 8 and p["degrees"].shape == (p["n"], 3) and p["times"].shape == (p["n"],)
    recomputed = score_motion(p["degrees"], p["translation"], AFFINE, SHAPE)
    assert abs(recomputed - target) <= 0.01
    assert abs(p["score"] - target) <= 1e-4
    assert np.all(np.diff(p["times"]) > 0) and 0 < p["times"].min() and p["times"].max() < 1


def test_sample_motion_other_conventions_and_n():
    for pairs in ("consecutive", "all"):
        for convention in ("applied", "authors"):
            p = sample_motion(1.7, 3, n=5, pairs=pairs, convention=convention)
            assert p["n"] == 5
            score = score_motion(p["degrees"], p["translation"], pairs=pairs, convention=convention)
            assert abs(score - 1.7) <= 0.01
    assert sample_motion(0.0, 1)["score"] == 0.0


def test_sample_motion_is_deterministic_per_seed():
    a, b, c = sample_motion(2.0, 42), sample_motion(2.0, 42), sample_motion(2.0, 43)
    for key in ("degrees", "translation", "times"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["translation"], c["translation"])


def test_sample_motion_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        sample_motion(-1.0, 0)
    with pytest.raises(ValueError, match="seed"):
        sample_motion(1.0, -3)
    with pytest.raises(ValueError, match="n must"):
        sample_motion(1.0, 0, n=0)


def test_authors_sampler_distribution():
    draws = [sample_authors_motion(seed) for seed in range(300)]
    free = [d for d in draws if d["motion_free"]]
    moved = [d for d in draws if not d["motion_free"]]
    assert 3 <= len(free) <= 30  # 5 % of 300, binomial bounds
    assert all(0 <= d["label"] <= 0.05 and d["n"] == 0 for d in free)
    assert all(abs(d["score"] - d["target"]) <= 0.01 for d in moved)
    assert all(0.05 <= d["target"] <= 4.0 and 2 <= d["n"] < 8 for d in moved)
    assert {d["n"] for d in moved} == set(range(2, 8))
    again = sample_authors_motion(17)
    np.testing.assert_array_equal(again["degrees"], draws[17]["degrees"])
    assert again["label"] == draws[17]["label"]


def test_split_sources_is_a_partition():
    ids = [f"s{i}" for i in range(23)]
    splits = split_sources(ids, seed=1)
    assert set(splits) == set(ids) and set(splits.values()) == {"train", "val", "test"}
    assert splits == split_sources(ids, seed=1)
    counts = pd.Series(splits).value_counts()
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    with pytest.raises(ValueError, match="unique"):
        split_sources(["a", "a"])


def test_parameter_table(tmp_path):
    ids = ["a", "b", "c", "d", "e"]
    path = tmp_path / "params.tsv"
    table = build_parameter_table(ids, 6, seed=3, path=path)
    assert len(table) == 30 and table.groupby("source")["split"].nunique().max() == 1
    assert set(table["split"]) == {"train", "val", "test"}
    again = read_parameter_table(path)
    pd.testing.assert_frame_equal(again, table, check_dtype=False)
    assert table.equals(build_parameter_table(ids, 6, seed=3))
    moved = table[~table["motion_free"]]
    assert (moved["score"] - moved["target"]).abs().max() <= 0.01
    uniform = build_parameter_table(ids[:2], 3, seed=0, sampler="uniform")
    assert (uniform["score"] - uniform["target"]).abs().max() <= 0.01


@pytest.fixture(scope="module")
def small_heads(sample):
    out = {}
    for row in sample.itertuples():
        image = load_volume(row.path)
        tensor = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32))[None]
        resample = tio.Compose([tio.Resample(6.0), tio.CropOrPad((28, 32, 28))])
        out[row.volume_id] = resample(tio.ScalarImage(tensor=tensor, affine=image.affine))
    return out


def test_dataset_is_deterministic_and_applies_motion(small_heads, tmp_path):
    table = build_parameter_table(sorted(small_heads), 2, seed=0, sampler="uniform")
    dataset = SyntheticMotionDataset(table, small_heads)
    first, again = dataset[1], dataset[1]
    assert first["image"].shape == (1, 28, 32, 28) and first["image"].dtype == torch.float32
    torch.testing.assert_close(first["image"], again["image"])
    assert not torch.equal(dataset[0]["image"], dataset[2]["image"])
    assert first["label"] == pytest.approx(table.loc[1, "label"])
    plain = SyntheticMotionDataset(table, small_heads, augment=False)
    row = table.iloc[1]
    deg, tra = np.array(json.loads(row["degrees"])), np.array(json.loads(row["translation"]))
    times = np.array(json.loads(row["times"]), dtype=np.float32)
    head = small_heads[row["source"]]
    expected = simulate_motion(head.data[0], deg, tra, times, head.affine)
    torch.testing.assert_close(plain[1]["image"][0], expected)
    train = SyntheticMotionDataset(table, small_heads, split="train")
    assert set(train.table["source"]) == set(table.loc[table["split"] == "train", "source"])
    index = export_nifti(plain, tmp_path / "out", indices=[0, 1])
    assert len(index) == 2 and (tmp_path / "out" / index.loc[0, "file"]).is_file()
    with pytest.raises(ValueError, match="split"):
        SyntheticMotionDataset(table, small_heads, split="holdout")
    with pytest.raises(ValueError, match="no volume"):
        SyntheticMotionDataset(table, {})


def test_samplers_reach_their_target_under_the_convention_they_are_given():
    from motionqc.physics.score import AUTHORS_CONVENTION, ScoreConvention
    from motionqc.synthetic.parameters import sample_authors_motion

    conv = ScoreConvention(pairs="all", radius=70.0, center="origin")
    p = sample_motion(1.3, 5, affine=AFFINE, shape=SHAPE, convention=conv)
    assert score_motion(p["degrees"], p["translation"], convention=conv) == pytest.approx(1.3)
    assert score_motion(p["degrees"], p["translation"], AFFINE, SHAPE) != pytest.approx(1.3)
    drawn = next(d for d in map(sample_authors_motion, range(20)) if not d["motion_free"])
    again = score_motion(drawn["degrees"], drawn["translation"], convention=AUTHORS_CONVENTION)
    assert again == pytest.approx(drawn["score"]) and abs(again - drawn["target"]) <= 0.01
    # the names of before: "authors" is the authors' convention, 82.5 mm and all
    assert (
        sample_authors_motion(3, convention="authors")["score"] == sample_authors_motion(3)["score"]
    )
    other = sample_authors_motion(3, radius=60.0)
    if not other["motion_free"]:
        assert score_motion(
            other["degrees"], other["translation"], convention=AUTHORS_CONVENTION, radius=60.0
        ) == pytest.approx(other["score"])
