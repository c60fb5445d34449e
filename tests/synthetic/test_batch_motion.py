"""Motion per batch (motionqc.synthetic.batch_motion) against TorchIO and the rendered pool."""

import json

import numpy as np
import pytest
import torch
import torchio as tio
from conftest import ellipsoid_head

from motionqc.data.volumes import preprocess, sample_manifest
from motionqc.models.sfcn import SFCN
from motionqc.stages import pretrain as stage
from motionqc.synthetic import batch_motion
from motionqc.synthetic import pool as motion_pool
from motionqc.training import recipe

SMOKE = recipe.RECIPES["smoke"]
FINE = SMOKE.replace(sim_spacing_mm=2.0, sim_shape=(80, 96, 80))  # motion at 2 mm, encoder 4 mm


def _head(seed, offset=0.0):
    """A textured ellipsoid 'head' on a 2 mm grid (80x96x80)."""
    return ellipsoid_head(seed, (80, 96, 80), 2.0, offset)


@pytest.fixture(scope="module")
def sources():
    # two "heads" on different world positions (each sample keeps its own affine)
    return {"a~0": _head(0), "a~1": _head(1), "b~0": _head(2, offset=3.0), "b~1": _head(3)}


@pytest.mark.parametrize(("factor", "fine"), [(4, (160, 192, 160)), (3, (120, 144, 120))])
def test_downsample_is_torchio_resample(factor, fine):
    files = sample_manifest().set_index("volume_id")["path"]
    head = preprocess(files["robex_atlas"], 1.0, fine)  # a real head at 1 mm
    coarse = tuple(s // factor for s in fine)
    expected = preprocess(head, float(factor), coarse, normalise=False).data[0]
    got = batch_motion.downsample(head.data[0][None], factor)[0]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))


def test_grids_that_do_not_nest_are_refused():
    assert batch_motion.grid_factor(FINE) == 2
    with pytest.raises(ValueError, match="integer factor"):
        batch_motion.grid_factor(FINE.replace(sim_shape=(80, 96, 96)))
    with pytest.raises(ValueError, match="integer factor"):
        batch_motion.grid_factor(FINE.replace(spacing_mm=5.0))
    with pytest.raises(ValueError, match="motion must be one of"):
        SMOKE.replace(motion="gpu")


def test_what_only_the_pool_renders_is_refused_per_batch(sources):
    with pytest.raises(ValueError, match="no detail channels"):
        batch_motion.MotionBatches(sources, FINE.replace(detail=True))
    noisy = FINE.replace(source_augment=dict(FINE.source_augment, p_noise=0.5))
    with pytest.raises(ValueError, match="no acquisition noise"):
        batch_motion.MotionBatches(sources, noisy)


def test_a_batch_sample_is_torchio_motion_then_the_inference_preprocessing(sources):
    feed = batch_motion.MotionBatches(sources, FINE)
    draws = feed.draw(0)
    x = feed.render(draws)
    assert x.shape == (FINE.batch_size, 1, *FINE.shape) and x.dtype == torch.float32
    moved = 0
    for i, (_, source, p) in enumerate(draws):
        assert motion_pool.source_splits(sources, FINE)[source] == "train"
        image = sources[source]
        if p["target"] > 0:
            image = tio.Motion(p["degrees"], p["translation"], p["times"], "linear")(image)
            moved += 1
        expected = preprocess(image, FINE.spacing_mm, FINE.shape).data[0]
        assert torch.linalg.norm(x[i, 0] - expected) / torch.linalg.norm(expected) < 1e-4
    assert moved
    # the pure-torch backend (the GPU path) gives the same samples
    on_torch = batch_motion.MotionBatches(sources, FINE, backend="torch").render(draws)
    assert torch.allclose(on_torch, x, atol=1e-3)


def test_a_batch_draw_is_the_pool_draw_of_the_same_seed(sources):
    # the same seed sequence: the same source, parameters and image as the rendered pool's
    images, table = motion_pool.render_pool(sources, FINE, "train", 4, progress=False)
    feed = batch_motion.MotionBatches(sources, FINE)
    draws = [
        motion_pool.draw_sample(np.random.SeedSequence([FINE.seed, 0, i]), feed.sources, FINE)
        for i in range(4)
    ]
    got = feed.render(draws)
    for i, (_, source, p) in enumerate(draws):
        row = table.iloc[i]
        assert source == row["source"] and p["score"] == pytest.approx(row["label"], abs=1e-6)
        assert np.allclose(np.asarray(json.loads(row["degrees"])), p["degrees"], atol=1e-7)
    ref = images.float()
    assert float((got - ref).abs().max()) < 2e-3 * float(ref.abs().max())  # float16 storage


def test_every_step_draws_new_seeded_samples(sources):
    feed = batch_motion.MotionBatches(sources, FINE)
    x0, y0 = feed.batch(0)
    again, y0_again = batch_motion.MotionBatches(sources, FINE).batch(0)
    x1, y1 = feed.batch(1)
    assert torch.equal(x0, again) and torch.equal(y0, y0_again)
    assert not torch.equal(y0, y1)
    seen, table = feed.fixed(5)
    assert len(seen) == len(table) == 5 and set(table["split"]) == {"train"}
    assert not torch.equal(torch.tensor(table["label"].to_numpy(), dtype=torch.float32)[:4], y0)


def _model():
    torch.manual_seed(0)
    return SFCN(n_outputs=50, channels=SMOKE.channels, dropout=SMOKE.dropout)


def test_training_on_batches_is_seeded_resumable_and_keyed(sources, tmp_path):
    config = FINE.replace(motion="batch")
    val = motion_pool.render_pool(sources, config, "val", 2, progress=False)
    val = (val[0], torch.tensor(val[1]["label"].to_numpy()))
    feed = batch_motion.MotionBatches(sources, config)
    first = recipe.train(_model(), feed, val, config, tmp_path / "a", log=False)
    second = recipe.train(_model(), feed, val, config, None, log=False)
    cols = ["step", "train_loss", "val_loss", "val_r2"]
    assert first[cols].equals(second[cols])
    # the pool recipe trains on other samples; its checkpoint key is as before the knob existed
    assert "motion" not in json.loads(FINE.checkpoint_key())
    assert json.loads(config.checkpoint_key())["motion"] == "batch"
    with pytest.raises(ValueError, match="other recipe settings"):
        pool = motion_pool.render_pool(sources, FINE, "train", 8, progress=False)
        pool = (pool[0], torch.tensor(pool[1]["label"].to_numpy()))
        recipe.train(_model(), pool, val, FINE, tmp_path / "a", log=False)
    with pytest.raises(ValueError, match="trains on a MotionBatches"):
        recipe.train(_model(), pool, val, config, None, log=False)


def test_pretrain_stage_trains_on_batches():
    # the bundled heads, motion at 2 mm for every step, the unseen head tested as always
    config = FINE.replace(motion="batch")
    files = sample_manifest().set_index("volume_id")["path"].to_dict()
    result = stage.run(config, files, draws=1, num_workers=0, log=False, train_eval=6)
    pred = result.predictions
    assert (pred["split"] == "train").sum() == 6 == len(result.pool_table)
    assert set(result.pool_table["source"]) <= {"robex_atlas~0", "mni152_2009~0"}
    assert set(pred.loc[pred["split"] == "val", "head"]) <= {"robex_atlas", "mni152_2009"}
    assert set(pred.loc[pred["split"] == "test", "head"]) == {"colin27"}
    assert list(result.history["step"]) == [2, 4]
