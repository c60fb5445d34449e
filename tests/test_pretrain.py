"""Pseudo-subjects, splits by head, rendered synthetic set, encoder file, demo QC set, transfer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from motionqc.data import preprocess
from motionqc.encoder import EncoderError, load_encoder, predict_motion, save_encoder
from motionqc.models import SFCN
from motionqc.pretrain import augment_heads, head_of, head_splits, render_synthetic
from motionqc.qc_demo import make_qc_set, rate
from motionqc.synthetic import SyntheticMotionDataset, build_parameter_table
from motionqc.transfer import (
    class_weights,
    embed,
    load_qc_head,
    predict_classes,
    save_qc_head,
    train_scratch,
    train_transfer,
)

SHAPE = (40, 48, 40)


@pytest.fixture(scope="module")
def real_heads(sample):
    real = sample[sample["kind"] != "template"] if "kind" in sample else sample
    return {r.volume_id: preprocess(r.path, 4.0, SHAPE) for r in real.head(2).itertuples()}


def test_augment_heads_is_seeded_and_changes_anatomy(real_heads):
    a = augment_heads(real_heads, 3, seed=1)
    b = augment_heads(real_heads, 3, seed=1)
    c = augment_heads(real_heads, 3, seed=2)
    assert list(a) == [f"{h}~{k}" for h in real_heads for k in range(3)]
    first = next(iter(real_heads))
    assert torch.equal(a[f"{first}~0"].data, real_heads[first].data)  # k = 0 is the head itself
    assert torch.equal(a[f"{first}~1"].data, b[f"{first}~1"].data)
    assert not torch.equal(a[f"{first}~1"].data, c[f"{first}~1"].data)
    assert not torch.allclose(a[f"{first}~1"].data, a[f"{first}~0"].data)
    with pytest.raises(ValueError, match="at least 1"):
        augment_heads(real_heads, 0)


def test_head_splits_keep_test_anatomy_out_of_training():
    ids = [f"{h}~{k}" for h in ("a", "b", "c") for k in range(4)]
    splits = head_splits(ids, test_heads=["c"], val_per_head=1)
    assert {head_of(s) for s, v in splits.items() if v == "test"} == {"c"}
    assert {head_of(s) for s, v in splits.items() if v != "test"} == {"a", "b"}
    assert sum(v == "val" for v in splits.values()) == 2
    with pytest.raises(ValueError, match="not among"):
        head_splits(ids, test_heads=["z"])
    with pytest.raises(ValueError, match="none left"):
        head_splits(ids, test_heads=["a", "b", "c"])


def test_render_synthetic_equals_the_dataset_and_caches(real_heads, tmp_path):
    sources = augment_heads(real_heads, 1)
    splits = {s: "train" for s in sources}
    table = build_parameter_table(sorted(sources), 2, seed=3, splits=splits)
    rendered = render_synthetic(table, sources, "train", cache_dir=tmp_path, progress=False)
    ds = SyntheticMotionDataset(table, sources, split="train")
    assert len(rendered) == len(ds) == 2 * len(sources)
    for i in range(len(ds)):
        x, y = rendered[i]
        assert torch.allclose(x, ds[i]["image"].half().float())
        assert float(y) == pytest.approx(ds[i]["label"])
    assert len(list(tmp_path.glob("synthetic_train_*.pt"))) == 1
    again = render_synthetic(table, sources, "train", cache_dir=tmp_path, progress=False)
    assert torch.equal(again.images, rendered.images)


def test_encoder_file_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = SFCN().eval()
    path = save_encoder(tmp_path / "enc.pt", model, spacing_mm=4.0, shape=SHAPE, info={"a": 1})
    loaded, meta = load_encoder(path)
    assert meta["shape"] == SHAPE and meta["spacing_mm"] == 4.0 and meta["info"] == {"a": 1}
    x = torch.rand(3, 1, *SHAPE)
    s1, d1 = predict_motion(model, x)
    s2, d2 = predict_motion(loaded, x, batch_size=2, channels_last=True)
    assert np.allclose(s1, s2, atol=1e-4) and np.allclose(d1, d2, atol=1e-4)
    with pytest.raises(EncoderError, match="no encoder file"):
        load_encoder(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="junk.pt"):
        load_encoder(tmp_path / "junk.pt")


def test_simulated_rater_follows_the_poster_imbalance():
    d = np.random.default_rng(0).gamma(2.0, 1.0, 1150)
    scores = rate(d, seed=0)
    share = np.array([(scores <= 2).mean(), (scores == 3).mean(), (scores == 4).mean()])
    assert np.allclose(share, np.array([7, 38, 70]) / 115, atol=0.01)
    # Without rater noise the grade is monotone in the degradation.
    clean = rate(d, seed=0, rater_noise=0.0)
    order = np.argsort(d)
    assert (np.diff(clean[order]) <= 0).all()


def test_demo_qc_set_is_deterministic_and_degradation_tracks_grades(real_heads):
    heads = augment_heads(real_heads, 2, seed=5, keep_original=False)
    splits = {s: ("train" if i % 2 else "test") for i, s in enumerate(heads)}
    images, table = make_qc_set(heads, 6, splits, seed=0)
    images2, table2 = make_qc_set(heads, 6, splits, seed=0)
    assert torch.equal(images, images2)
    pd.testing.assert_frame_equal(table, table2)
    assert images.shape == (len(heads) * 6, 1, *SHAPE)
    assert set(table["qc_class"]) <= {0, 1, 2}
    assert table.groupby("source")["split"].nunique().max() == 1
    means = table.groupby("qc_score")["degradation"].mean()
    assert means.loc[means.index.max()] < means.loc[means.index.min()]


def test_class_weights_and_transfer_head_learn_separable_embeddings(tmp_path):
    w = class_weights([0, 1, 1, 2, 2, 2, 2])
    assert w[0] > w[1] > w[2] and torch.isclose(w.mean(), torch.tensor(1.0))
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [10, 30, 60])
    centres = rng.normal(0, 3, (3, 16))
    z = torch.tensor(centres[y] + rng.normal(0, 1, (len(y), 16)), dtype=torch.float32)
    run = train_transfer(z, y, z, y, seed=0, max_epochs=40, dropout=0.1)
    pred = predict_classes(run.model, z).argmax(1)
    assert balanced_accuracy_score(y, pred) > 0.9
    enc = save_encoder(tmp_path / "enc.pt", SFCN(), spacing_mm=4.0, shape=SHAPE)
    head_path = save_qc_head(tmp_path / "head.pt", run, enc, {"seed": 0})
    head, meta = load_qc_head(head_path, enc)
    assert np.allclose(predict_classes(head, z), predict_classes(run.model, z), atol=1e-5)
    other = save_encoder(tmp_path / "other.pt", SFCN(dropout=0.3), spacing_mm=4.0, shape=SHAPE)
    with pytest.raises(ValueError, match="another encoder"):
        load_qc_head(head_path, other)


def test_transfer_head_trains_when_the_last_batch_holds_one_volume():
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 2] * 5 + [0, 1])  # 17 volumes, batches of 16: a last batch of one
    z = torch.tensor(rng.normal(0, 1, (len(y), 8)) + y[:, None], dtype=torch.float32)
    run = train_transfer(z, y, z, y, seed=0, max_epochs=2, batch_size=16)
    assert len(run.history) == 2
    x = torch.rand(len(y), 1, *SHAPE)  # the scratch SFCN: BatchNorm3d on 1x1x1 maps at the end
    scratch = train_scratch(
        x, y, x[:3], y[:3], seed=0, max_epochs=1, batch_size=16, channels=(2, 2, 2, 2, 2, 2)
    )
    assert len(scratch.history) == 1


def test_embedding_cache_skips_known_volumes(tmp_path):
    torch.manual_seed(0)
    model = SFCN().eval()
    x = torch.rand(3, 1, *SHAPE)
    cache = tmp_path / "emb.pt"
    z = embed(model, x, ["a", "b", "c"], cache=cache, progress=False)
    calls = []
    original = model.features
    model.features = lambda t, pooled=False: calls.append(len(t)) or original(t, pooled)  # type: ignore[method-assign]
    z2 = embed(model, x, ["a", "b", "c"], cache=cache, progress=False)
    assert calls == [] and torch.equal(z, z2)
    embed(model, torch.cat([x, x[:1]]), ["a", "b", "c", "d"], cache=cache, progress=False)
    assert calls == [1]
    assert z.shape == (3, model.embedding_size(SHAPE))
