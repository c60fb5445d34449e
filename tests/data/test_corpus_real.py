"""The corpus path on the real corpus, at smoke scale (no training).

The corpus is not part of the project: ``MOTIONQC_CORPUS_ROOT`` names the folder holding it
(``.ci/run`` sets it when a ``corpus/`` folder with a ``manifest.tsv`` lies beside the clone).
Without it these tests fail under CI (``CI`` set) and are skipped elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from motionqc.data.corpus import TEST_ONLY, load_corpus, training_heads
from motionqc.evaluation.encoder_test import predict_table, unseen_head_inputs
from motionqc.models.encoder import load_encoder, released_encoder_path
from motionqc.synthetic.pool import load_sources, render_pool
from motionqc.training.recipe import RECIPES


@pytest.fixture(scope="module")
def corpus():
    root = os.environ.get("MOTIONQC_CORPUS_ROOT", "")
    if not root or not Path(root).is_dir():
        message = "MOTIONQC_CORPUS_ROOT does not name the corpus folder"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must check the corpus path on real heads")
        pytest.skip(message)
    return load_corpus(data_root=root)  # every file checked against its SHA-256


def test_the_corpus_split_keeps_subjects_and_test_only_heads_apart(corpus):
    train, val, test, maps = training_heads(corpus)
    assert len(train) >= 120 and len(val) >= 10 and len(maps) == 20
    tests = corpus[corpus["split"] == "test"]
    assert (tests["test_set"] == "held_out").sum() >= 20
    assert (tests["test_set"] == "cross_scanner").sum() >= 2
    assert corpus.groupby("subject")["split"].nunique().max() == 1
    assert set(corpus.loc[corpus["use"] == TEST_ONLY, "split"]) == {"test"}


def test_the_corpus_recipe_renders_real_and_generated_heads(corpus):
    train, val, _, maps = training_heads(corpus)
    files = dict(zip(corpus["volume_id"], corpus["path"], strict=True))
    config = RECIPES["corpus"].replace(
        train_heads=train[:2], val_heads=val[:1], label_maps=maps[:1], heads_per_map=1
    )
    sources = load_sources(files, config)
    assert sorted(sources) == sorted(
        [f"{train[0]}~0", f"{train[1]}~0", f"{val[0]}~0", f"{maps[0]}.g0~0"]
    )
    for image in sources.values():
        assert image.shape[1:] == config.sim_shape and image.spacing == (1.0, 1.0, 1.0)
    images, table = render_pool(sources, config, "train", 3, progress=False)
    assert images.shape == (3, 1, *config.shape)
    assert torch.isfinite(images.float()).all()
    assert set(table["head"]) <= {train[0], train[1], f"{maps[0]}.g0"}
    assert ((table["label"] >= 0) & (table["label"] <= config.max_score + 1e-6)).all()


def test_a_held_out_and_a_cross_scanner_head_are_scored_on_the_1mm_grid(corpus):
    tests = corpus[corpus["split"] == "test"]
    picked = tests.groupby("test_set").head(1)
    heads = dict(zip(picked["volume_id"], picked["path"], strict=True))
    model, meta = load_encoder(released_encoder_path())
    rows, inputs = unseen_head_inputs(meta, heads, scores=(0.0, 2.0), draws=1, grid_mm=1.0)
    assert len(rows) == 4 and all(x.shape[1:] == tuple(meta["shape"]) for x in inputs)
    assert np.allclose(rows["true"], [0.0, 2.0] * 2, atol=1e-4)
    table = predict_table(model, meta, rows, inputs)
    assert np.isfinite(table["pred"]).all() and (table["std"] > 0).all()
