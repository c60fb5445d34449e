"""Pseudo-subjects, splits by head, rendered synthetic set, encoder file, demo QC set, transfer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torchio as tio
from sklearn.metrics import balanced_accuracy_score

from motionqc.data.volumes import preprocess
from motionqc.models.encoder import EncoderError, load_encoder, predict_motion, save_encoder
from motionqc.models.qc_head import load_qc_head, save_qc_head
from motionqc.models.sfcn import SFCN
from motionqc.synthetic.heads import augment_heads, head_of, head_splits, render_synthetic
from motionqc.synthetic.motion_sets import SyntheticMotionDataset, build_parameter_table
from motionqc.synthetic.qc_demo import (
    ARTEFACT_PROBABILITY,
    ARTEFACT_RANGE,
    corrupt,
    make_qc_set,
    quality_measures,
)
from motionqc.training.transfer import (
    class_weights,
    embed,
    predict_classes,
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
    # a space-to-depth encoder comes back with its factor (without it the weights would not fit)
    folded = SFCN(unshuffle=2).eval()
    big = tuple(2 * s for s in SHAPE)
    loaded, meta = load_encoder(
        save_encoder(tmp_path / "s2d.pt", folded, spacing_mm=2.0, shape=big)
    )
    assert loaded.unshuffle == 2 and meta["shape"] == big
    x = torch.rand(2, 1, *big)
    assert np.allclose(predict_motion(folded, x)[0], predict_motion(loaded, x)[0], atol=1e-4)
    # so does a detail encoder's normalisation (without it the file scores different inputs)
    normed = SFCN(in_channels=4, detail_norm="axes").eval()
    loaded, _ = load_encoder(
        save_encoder(tmp_path / "axes.pt", normed, spacing_mm=4.0, shape=SHAPE, detail_mm=1.0)
    )
    assert loaded.detail_norm == "axes"
    x = torch.randn(2, 4, *SHAPE)
    assert np.allclose(predict_motion(normed, x)[0], predict_motion(loaded, x)[0], atol=1e-4)
    with pytest.raises(EncoderError, match="no encoder file"):
        load_encoder(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="junk.pt"):
        load_encoder(tmp_path / "junk.pt")


def test_quality_measures_match_their_analytic_values(real_heads):
    clean = next(iter(real_heads.values())).data[0].float()
    head = clean > 0.1 * float(clean.mean())
    assert quality_measures(clean, clean, head) == {
        "nrmse": 0.0,
        "background_error": 0.0,
        "sharpness_loss": 0.0,
    }
    # A constant offset is no detail and no loss of edges; in the background it is all error.
    offset = quality_measures(clean + 0.3, clean, head)
    assert offset["nrmse"] == pytest.approx(0.0, abs=1e-6)
    assert offset["sharpness_loss"] == pytest.approx(0.0, abs=1e-6)
    assert offset["background_error"] == pytest.approx(0.3 / float(clean[head].mean()), rel=1e-5)
    # White noise of std s: the detail error is the noise itself (its smooth part is ~0).
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.05, clean.shape)).float()
    noisy = quality_measures(clean + noise, clean, head)
    rms = float(clean[head].pow(2).mean().sqrt())
    assert noisy["nrmse"] == pytest.approx(0.05 / rms, rel=0.05)
    assert noisy["sharpness_loss"] == 0.0  # noise adds gradient
    blurred = tio.Blur(std=(2.0,) * 3)(
        tio.ScalarImage(tensor=clean[None], affine=np.diag([4.0] * 3 + [1]))
    ).data[0]
    assert quality_measures(blurred, clean, head)["sharpness_loss"] > 0.1
    with pytest.raises(ValueError, match="inside and outside"):
        quality_measures(clean, clean, torch.ones_like(head))


def test_artefacts_are_drawn_independently(real_heads):
    image = next(iter(real_heads.values()))
    columns = [column for column, _ in ARTEFACT_RANGE.values()]
    draws = pd.DataFrame([corrupt(image, seed)[1] for seed in range(240)])[columns] > 0
    for artefact, (column, _) in ARTEFACT_RANGE.items():
        p = ARTEFACT_PROBABILITY[artefact]
        assert abs(draws[column].mean() - p) < 3.5 * np.sqrt(p * (1 - p) / len(draws)), artefact
    # A shared severity (the former "badness") made artefacts co-occur: r of about 0.3 and more.
    r = draws.astype(float).corr().to_numpy()[np.triu_indices(len(columns), 1)]
    assert np.abs(r).max() < 0.2, r


def test_demo_qc_set_fixes_its_cut_offs_on_the_training_split(real_heads, sample):
    heads = augment_heads(real_heads, 3, seed=5, keep_original=False)
    splits = {s: ("test" if s.endswith("~2") else "train") for s in heads}
    images, table = make_qc_set(heads, 8, splits, seed=0)
    images2, table2 = make_qc_set(heads, 8, splits, seed=0)
    assert torch.equal(images, images2)
    pd.testing.assert_frame_equal(table, table2)
    assert images.shape == (len(heads) * 8, 1, *SHAPE)
    assert set(table["head"]) == set(real_heads) and set(table["qc_class"]) <= {0, 1, 2}
    assert (table["qc_score"] == table["qc_score_rater1"]).all()
    assert (table["qc_score_rater1"] != table["qc_score_rater2"]).any()  # two raters disagree
    # The test split's volumes do not move the training split's cut-offs: degrading every test
    # volume further changes no training grade (quantiles over the whole set would).
    worse = {s: 50 if splits[s] == "test" else 8 for s in heads}
    _, more = make_qc_set(heads, worse, splits, seed=0)
    train = table["split"] == "train"
    pd.testing.assert_series_equal(
        more.loc[more["split"] == "train", "qc_score"].reset_index(drop=True),
        table.loc[train, "qc_score"].reset_index(drop=True),
    )
    # On a finer grid the artefacts are simulated and rated there, the volumes returned on grid.
    row = sample.set_index("volume_id").loc[next(iter(real_heads))]
    fine = {row.name: preprocess(row.path, 2.0, (80, 96, 80))}
    fine_images, _ = make_qc_set(fine, 2, dict.fromkeys(fine, "train"), seed=0, grid=(4.0, SHAPE))
    assert fine_images.shape == (2, 1, *SHAPE)
    # an encoder with detail channels gets them from the finer grid, the head channel unchanged
    detailed, _ = make_qc_set(
        fine, 2, dict.fromkeys(fine, "train"), seed=0, grid=(4.0, SHAPE), detail_mm=2.0
    )
    assert detailed.shape == (2, 4, *SHAPE)
    assert torch.allclose(detailed[:, :1], fine_images, atol=1e-5)
    assert float(detailed[:, 1:].std()) > 0.05


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
    # the file records the task it was trained for: three classes, ratings {1,2} / 3 / 4
    assert meta["task"] == {
        "n_classes": 3,
        "rating_to_class": {"1": 0, "2": 0, "3": 1, "4": 2},
        "class_labels": ["1/2", "3", "4"],
    }
    assert torch.load(head_path, weights_only=True)["task"] == meta["task"]
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
