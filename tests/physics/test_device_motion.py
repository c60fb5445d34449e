"""Motion on the training device: MotionSourceSet + DeviceMotion against the CPU dataset and TorchIO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from torch.utils.data import DataLoader

from motionqc.data.volumes import preprocess
from motionqc.models.encoder import predict_motion
from motionqc.models.sfcn import SFCN
from motionqc.models.soft_labels import SoftLabelKL
from motionqc.synthetic.heads import DeviceMotion, MotionSourceSet, bias_field, predict_split
from motionqc.synthetic.motion_sets import SyntheticMotionDataset, build_parameter_table
from motionqc.training.config import TrainConfig
from motionqc.training.reproducibility import kaiming_init, seed_everything
from motionqc.training.trainer import Trainer

SHAPE = (40, 48, 40)


@pytest.fixture(scope="module")
def sources(sample):
    real = sample[sample["kind"] != "template"] if "kind" in sample else sample
    return {r.volume_id: preprocess(r.path, 4.0, SHAPE) for r in real.head(2).itertuples()}


@pytest.fixture(scope="module")
def table(sources):
    splits = {s: "train" for s in sources}
    out = build_parameter_table(sorted(sources), 4, seed=5, sampler="authors", splits=splits)
    # One motion-free row (as the sampler draws for tiny targets) beside moving rows of varied n.
    out.loc[1, ["n", "degrees", "translation", "times"]] = [0, "[]", "[]", "[]"]
    assert out["n"].nunique() >= 3
    return out


def _batch(ds, indices):
    return next(iter(DataLoader(torch.utils.data.Subset(ds, indices), batch_size=len(indices))))


@pytest.mark.parametrize("shape", [(10, 12, 9), (7, 8, 6), (40, 48, 40)])
def test_bias_field_equals_torchio(shape):
    coef = np.random.default_rng(sum(shape)).uniform(-0.35, 0.35, 20)
    ref = tio.BiasField(coefficients=list(coef), order=3)(
        tio.ScalarImage(tensor=torch.ones(1, *shape))
    )
    assert torch.allclose(bias_field(shape, coef), ref.data[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="20 coefficients"):
        bias_field(shape, coef[:5])


@pytest.mark.parametrize("augment", [False, True])
def test_device_motion_equals_the_cpu_dataset(sources, table, augment):
    # Intensity augmentations off (p_intensity=0): flip, elastic, motion and rescale must be the
    # CPU dataset's (SimpleITK resampling there, pure torch here).
    kw = {"augment": augment, "p_intensity": 0.0}
    cpu = SyntheticMotionDataset(table, sources, **kw)
    dev = MotionSourceSet(table, sources, **kw)
    assert len(dev) == len(cpu) and dev.max_transforms == int(table["n"].max())
    idx = list(range(len(dev)))
    inputs, labels = _batch(dev, idx)
    out = DeviceMotion()(inputs)
    assert out.shape == (len(idx), 1, *SHAPE) and out.dtype == torch.float32
    for i in idx:
        ref = cpu[i]["image"]
        err = (out[i] - ref).abs().max() / ref.abs().max()
        assert err < 1e-4, f"row {i}: relative error {err:.2e}"
        assert float(labels[i]) == pytest.approx(cpu[i]["label"])


def test_device_chain_equals_torchio_transforms(sources, table):
    # Gamma, bias field and rescale on the device against TorchIO's own transforms.
    dev = MotionSourceSet(table, sources, augment=True, p_intensity=1.0)
    idx = list(range(6))
    inputs, _ = _batch(dev, idx)
    assert bool((inputs["gamma"] != 1).all()) and bool((inputs["bias"].abs().sum(1) > 0).all())
    full = DeviceMotion()(inputs)
    plain = dict(inputs)
    plain["gamma"] = torch.ones_like(inputs["gamma"])
    plain["bias"] = torch.zeros_like(inputs["bias"])
    plain["rescale_max"] = torch.zeros_like(inputs["rescale_max"])
    moved = DeviceMotion()(plain)
    for i in idx:
        img = tio.ScalarImage(tensor=moved[i].clone())
        img = tio.Gamma(float(inputs["gamma"][i]))(img)
        img = tio.BiasField(coefficients=inputs["bias"][i].tolist(), order=3)(img)
        img = tio.RescaleIntensity(out_min_max=(0.0, float(inputs["rescale_max"][i])))(img)
        assert torch.allclose(full[i], img.data, atol=1e-5), f"row {i}"


def test_motion_source_set_is_seeded_and_checks_its_input(sources, table):
    a, b = MotionSourceSet(table, sources), MotionSourceSet(table, sources)
    for i in (0, 3):
        for key, value in a[i][0].items():
            assert torch.equal(value, b[i][0][key]), key
    with pytest.raises(IndexError):
        a[len(a)]
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        DeviceMotion()({"image": torch.zeros(2, 4, 4, 4)})


def test_parameters_without_the_image_are_the_items_own(sources, table):
    ds = MotionSourceSet(table, sources)
    flips = 0
    for i in range(len(ds)):
        item, label = ds[i]
        params = ds.parameters(i)
        for key in ("n", "degrees", "translation", "times", "gamma", "bias", "rescale_max"):
            assert torch.equal(params[key], item[key]), (i, key)
        assert float(params["label"]) == float(label)
        if bool(params["flip"]):  # the flip it reports is the one the item got
            flips += 1
            plain = MotionSourceSet(table, sources, p_elastic=0.0)[i][0]["image"]
            source = sources[table.iloc[i]["source"]].data.float()
            assert torch.equal(plain, source.flip(1))
    assert flips > 0


def test_trainer_with_device_motion_is_deterministic(sources, table):
    ds = MotionSourceSet(table, sources)

    def run():
        seed_everything(0)
        # A narrow SFCN: determinism and the device/CPU equality do not depend on the width.
        model = kaiming_init(SFCN(n_outputs=50, channels=(8, 16, 16, 32, 32, 16)))
        cfg = TrainConfig(
            max_epochs=1,
            batch_size=4,
            lr=1e-3,
            precision="fp32",
            seed=0,
            schedule="onecycle",
            early_stopping_patience=None,
            progress=False,
        )
        trainer = Trainer(
            model,
            SoftLabelKL(),
            ds,
            ds,
            config=cfg,
            batch_transform=DeviceMotion(),
            monitor_resources=False,
        )
        history = trainer.fit()
        outputs, targets, _ = trainer.predict(ds)
        return trainer.module, history, outputs, targets

    (model, h1, o1, t1), (_, h2, o2, t2) = run(), run()
    assert h1[0]["train_loss"] == h2[0]["train_loss"] and np.isfinite(h1[0]["val_loss"])
    assert torch.equal(o1, o2) and o1.shape == (len(ds), 50)
    assert torch.equal(t1, ds.labels) and torch.equal(t2, t1)

    # predict_split scores a clean-source split through the device transform exactly as the
    # encoder scores the CPU dataset's rendered images.
    # (intensity augmentations off: their gamma and bias draws differ between the two sets)
    cpu = SyntheticMotionDataset(table, sources, p_intensity=0.0)
    same = MotionSourceSet(table, sources, p_intensity=0.0)
    ref, _ = predict_motion(model, torch.stack([cpu[i]["image"] for i in range(len(cpu))]))
    got = predict_split(model, same, batch_transform=DeviceMotion(), batch_size=3)
    assert list(got.columns) == ["true", "pred", "std", "source"] and len(got) == len(same)
    np.testing.assert_allclose(got["pred"], ref, atol=1e-3)
    np.testing.assert_array_equal(got["true"], same.labels.numpy())
    sub = predict_split(model, same, [5, 2], batch_transform=DeviceMotion())
    np.testing.assert_allclose(sub["pred"], got["pred"].to_numpy()[[5, 2]], atol=1e-5)
    with pytest.raises(ValueError, match="clean sources"):
        predict_split(model, ds)
