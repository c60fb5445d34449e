"""The detail channels (motionqc.data.detail): the fine grid's gradient energy on the encoder grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import write_nifti

from motionqc.data.detail import (
    DETAIL_EPS,
    DETAIL_SCALE,
    detail_channels,
    encoder_input,
    zoom_offset,
)
from motionqc.data.volumes import preprocess
from motionqc.models.encoder import load_encoder, save_encoder, scale_input
from motionqc.models.sfcn import SFCN
from motionqc.synthetic import augment as augmentation
from motionqc.synthetic.augment import gaussian_blur
from motionqc.training.recipe import RECIPES


def _smooth_volume(seed: int, shape=(32, 40, 32), sigma=2.0) -> torch.Tensor:
    """Blurred noise plus one: a band-limited positive texture with mean about one."""
    gen = torch.Generator().manual_seed(seed)
    v = gaussian_blur(torch.randn(shape, generator=gen), sigma)
    return 1.0 + v / v.std() * 0.3


def test_detail_channels_are_block_energy_ratios_computed_in_numpy():
    x = _smooth_volume(0).numpy().astype(np.float64)
    got = detail_channels(torch.from_numpy(x).float(), 4).numpy()

    def blocks(a):  # the mean of each 4x4x4 block, by reshaping
        s = a.shape
        return a.reshape(s[0] // 4, 4, s[1] // 4, 4, s[2] // 4, 4).mean(axis=(1, 3, 5))

    den = blocks(x**2)
    for axis in range(3):
        d = np.diff(x, axis=axis, append=np.take(x, [-1], axis=axis))
        want = np.log((blocks(d**2) + DETAIL_EPS) / (den + DETAIL_EPS)) / DETAIL_SCALE
        assert np.allclose(got[axis], want, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 4"):
        detail_channels(torch.ones(30, 40, 32), 4)


def test_a_blur_along_one_axis_lowers_that_axis_channel_most():
    x = _smooth_volume(1, sigma=1.0)
    blurred = gaussian_blur(x, [0.0, 0.0, 1.5])  # the last axis only, as a motion blur would
    before, after = detail_channels(x, 4), detail_channels(blurred, 4)
    drop = (before - after).mean(dim=(1, 2, 3))
    assert float(drop[2]) > 0.1  # the blurred axis loses its differences
    # the others lose less (averaging along Z also smooths their differences)
    assert 0 <= float(drop[0]) < 0.5 * float(drop[2])
    assert 0 <= float(drop[1]) < 0.5 * float(drop[2])


def _waves(zoom: float, shape=(64, 64, 64)) -> torch.Tensor:
    """A texture of 24 plane waves (periods 8-20 voxels), sampled as if magnified by ``zoom``."""
    rng = np.random.default_rng(4)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    out = np.full(shape, 3.0)
    for _ in range(24):
        direction = rng.normal(size=3)
        k = direction / np.linalg.norm(direction) / rng.uniform(8, 20) * 2 * np.pi
        phase = rng.uniform(0, 2 * np.pi)
        out += 0.2 * np.cos(np.tensordot(k, grid / zoom, axes=1) + phase)
    return torch.from_numpy(out).float()


def test_zoom_offset_is_what_a_zoom_on_the_fine_grid_does():
    base = detail_channels(_waves(1.0), 4).mean()
    for zoom in (0.85, 1.2):
        shift = detail_channels(_waves(zoom), 4).mean() - base
        assert float(shift) == pytest.approx(zoom_offset(zoom), rel=0.25)  # the first-order size
    assert zoom_offset(1.2) == pytest.approx(-2 * math.log(1.2) / DETAIL_SCALE)


def test_encoder_input_on_a_real_nifti(tmp_path, sample):
    path = sample["path"].iloc[0]
    plain = encoder_input(path, 4.0, (40, 48, 40))
    assert torch.equal(plain, preprocess(path, 4.0, (40, 48, 40)).data.float())
    with_detail = encoder_input(path, 4.0, (40, 48, 40), 1.0)
    assert with_detail.shape == (4, 40, 48, 40)
    fine = preprocess(path, 1.0, (160, 192, 160))
    assert torch.allclose(with_detail[0], preprocess(fine, 4.0, (40, 48, 40)).data[0])
    assert torch.allclose(with_detail[1:], detail_channels(fine.data[0], 4), atol=1e-6)
    assert float(with_detail[0].mean()) == pytest.approx(1.0, rel=1e-5)
    # the head's scale does not matter; a grid that is not a whole multiple is refused
    scaled = write_nifti(tmp_path / "scaled.nii.gz", fine.data[0].numpy() * 250.0, fine.affine)
    assert torch.allclose(encoder_input(scaled, 4.0, (40, 48, 40), 1.0), with_detail, atol=1e-4)
    with pytest.raises(ValueError, match="whole multiple"):
        encoder_input(path, 4.0, (40, 48, 40), 1.5)


def test_only_the_head_channel_is_scaled_and_augmented():
    gen = torch.Generator().manual_seed(0)
    head = torch.rand(2, 1, 16, 20, 16, generator=gen) * 3
    extra = torch.randn(2, 3, 16, 20, 16, generator=gen)
    x = torch.cat([head, extra], dim=1)
    scaled = scale_input(x, "percentile")
    assert torch.equal(scaled[:, :1], scale_input(head, "percentile"))
    assert torch.equal(scaled[:, 1:], extra)
    knobs = dict(RECIPES["sample"].augment)
    for p_flip in (0.0, 1.0):
        knobs["p_flip"] = p_flip
        out = augmentation.augment_batch(x, torch.Generator().manual_seed(5), knobs, spacing_mm=4.0)
        alone = augmentation.augment_batch(
            head, torch.Generator().manual_seed(5), knobs, spacing_mm=4.0
        )
        assert torch.equal(out[:, :1], alone)  # the same draws as a one-channel batch
        assert torch.equal(out[:, 1:], extra.flip(2) if p_flip else extra)


def test_geometry_moves_the_detail_with_the_head_and_offsets_it_by_the_zoom():
    ball = torch.zeros(4, 4, 24, 24, 24)
    ball[:, 0, 6:18, 6:18, 6:18] = 1.0
    ball[:, 1:] = -1.5  # a constant detail value
    labels = torch.full((4,), 1.0)
    knobs = {"p_geometry": 1.0, "zoom": 0.2, "rotate_deg": 0.0, "shift_mm": 0.0}
    out, zoomed = augmentation.geometry_batch(
        ball, labels, torch.Generator().manual_seed(1), knobs, 4.0
    )
    for v, zoom in zip(out, zoomed.tolist(), strict=True):
        centre = v[1:, 10:14, 10:14, 10:14]  # inside the field of view
        assert torch.allclose(centre, torch.full_like(centre, -1.5 + zoom_offset(zoom)), atol=1e-5)


def test_encoder_file_keeps_its_input_channels_and_detail_grid(tmp_path):
    model = SFCN(n_outputs=50, channels=(4, 4, 4, 4, 4, 4), in_channels=4).eval()
    path = save_encoder(tmp_path / "e.pt", model, spacing_mm=4.0, shape=(40, 48, 40), detail_mm=1.0)
    loaded, meta = load_encoder(path)
    assert loaded.in_channels == 4 and meta["detail_mm"] == 1.0
    x = torch.rand(1, 4, 40, 48, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    plain = save_encoder(tmp_path / "p.pt", SFCN(n_outputs=50), spacing_mm=4.0, shape=(40, 48, 40))
    assert load_encoder(plain)[1]["detail_mm"] is None


def test_the_detail_knob_enters_the_keys_only_when_on():
    base = RECIPES["smoke"]
    on = base.replace(detail=True)
    assert "detail" not in base.checkpoint_key() and on.checkpoint_key() != base.checkpoint_key()
    assert (base.in_channels, base.detail_mm) == (1, None)
    assert (on.in_channels, on.detail_mm) == (4, base.sim_spacing_mm)


def test_preprocess_rows_give_an_encoder_with_detail_its_four_channels(sample):
    import pandas as pd

    from motionqc.data.detail import preprocess_rows

    table = pd.DataFrame({"volume_id": ["a", "gone"], "path": [sample["path"].iloc[0], "none.nii"]})
    meta = {"spacing_mm": 4.0, "shape": (40, 48, 40), "detail_mm": 1.0}
    images, kept, errors = preprocess_rows(table, meta)
    assert list(kept["volume_id"]) == ["a"] and [e["volume_id"] for e in errors] == ["gone"]
    assert torch.equal(images[0], encoder_input(sample["path"].iloc[0], 4.0, (40, 48, 40), 1.0))
