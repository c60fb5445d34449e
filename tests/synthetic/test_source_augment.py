"""The draws applied to a pool sample's source before its motion (``randomise_source``), and the
acquisition noise after it (``acquisition_noise``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from motionqc.synthetic.pool import acquisition_noise, randomise_source, source_augment_on
from motionqc.synthetic.texture import IN_HEAD, synthetic_texture
from motionqc.training.recipe import RECIPES

KNOBS = RECIPES["sample"].source_augment


def _cube(shape=(40, 44, 36), lo=(14, 16, 12), size=10) -> torch.Tensor:
    v = torch.zeros(shape)
    v[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = 1.0
    return v


def test_knobs_that_draw_nothing_leave_the_volume_and_the_generator_alone():
    assert not source_augment_on(KNOBS)
    v = _cube()
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    assert randomise_source(v, rng, KNOBS, 1.0) is v
    assert rng.bit_generator.state == before
    assert source_augment_on(dict(KNOBS, p_geometry=0.1))


def test_geometry_draws_the_same_number_of_values_whatever_their_outcome():
    v = _cube()
    states = []
    for p in (1e-12, 1.0):  # never applied / always applied
        rng = np.random.default_rng(5)
        randomise_source(v, rng, dict(KNOBS, p_geometry=p), 1.0)
        states.append(rng.bit_generator.state)
    assert states[0] == states[1]


def test_geometry_comes_after_the_contrast_draws():
    """An identity geometry leaves the remapped contrast of the same seed exactly as it was."""
    v = _cube() * 0.5 + torch.linspace(0, 0.5, 36)  # a ramp so the remap has something to map
    remap = dict(KNOBS, p_remap=1.0)
    identity = dict(remap, p_geometry=1.0, zoom=0.0, rotate_deg=0.0, shift_mm=0.0)
    a = randomise_source(v, np.random.default_rng(9), remap, 1.0)
    b = randomise_source(v, np.random.default_rng(9), identity, 1.0)
    assert not torch.equal(a, v)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_geometry_shifts_and_zooms_the_head_within_its_ranges():
    v = _cube()
    com = np.array(ndimage.center_of_mass(v.numpy()))
    shifts, volumes = [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        moved = randomise_source(v, rng, dict(KNOBS, p_geometry=1.0, zoom=0.0, rotate_deg=0.0), 2.0)
        shifts.append((np.array(ndimage.center_of_mass(moved.numpy())) - com) * 2.0)  # mm
        zoomed = randomise_source(
            v, np.random.default_rng(seed), dict(KNOBS, p_geometry=1.0, shift_mm=0.0), 2.0
        )
        volumes.append(float(zoomed.sum()) / float(v.sum()))
        # a rotation and zoom about the grid centre keep the cube's centre where it was
        offset = np.array(ndimage.center_of_mass(zoomed.numpy())) - (np.array(v.shape) - 1) / 2
        np.testing.assert_allclose(offset, com - (np.array(v.shape) - 1) / 2, atol=1.5)
    shifts = np.abs(np.array(shifts))
    assert shifts.max() <= KNOBS["shift_mm"] + 0.1 and shifts.max() > 0.5 * KNOBS["shift_mm"]
    # a zoom s ∈ [1/1.2, 1.2] scales a volume by s³ ∈ [0.58, 1.73]; twelve draws spread over it
    assert 0.55 < min(volumes) < 0.9 and 1.15 < max(volumes) < 1.8


def test_a_geometry_that_is_never_drawn_changes_nothing():
    v = _cube()
    knobs = dict(KNOBS, p_remap=1.0)
    a = randomise_source(v, np.random.default_rng(1), knobs, 1.0)
    b = randomise_source(v, np.random.default_rng(1), dict(knobs, p_geometry=1e-12), 1.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "knob", ["p_remap", "p_blur", "p_geometry", "p_noise", "p_sharpen", "p_blur_axes", "p_texture"]
)
def test_each_drawing_knob_enters_the_pool_and_checkpoint_keys(knob):
    base = RECIPES["smoke"]
    drawing = base.replace(source_augment=dict(base.source_augment, **{knob: 0.5}))
    assert drawing.checkpoint_key() != base.checkpoint_key()
    assert "source_augment" not in base.checkpoint_key()


def test_acquisition_noise_has_rician_statistics_and_a_drawn_level():
    v = torch.zeros(64, 64, 64)
    v[32:] = 2.0  # mean intensity 1: half dark background, half bright tissue
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert acquisition_noise(v, rng, KNOBS) is v  # p_noise 0: no draw
    assert rng.bit_generator.state == before
    levels = []
    for seed in range(6):
        out = acquisition_noise(v, np.random.default_rng(seed), dict(KNOBS, p_noise=1.0))
        dark, bright = out[:32].double(), out[32:].double()
        assert float(out.min()) >= 0.0  # a magnitude image
        sigma = float(bright.std())  # at SNR >= 40 the Rician is Gaussian with the noise's sigma
        assert sigma <= KNOBS["noise_std"] * 1.02
        levels.append(sigma)
        if sigma > 0.005:
            # the dark half is Rayleigh: mean sigma * sqrt(pi / 2), mean^2 / var = pi / (4 - pi);
            # Gaussian noise added to the magnitude would leave a zero-mean background instead
            assert float(dark.mean()) == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)
            assert float(dark.mean() ** 2 / dark.var()) == pytest.approx(
                np.pi / (4 - np.pi), rel=0.05
            )
    assert max(levels) - min(levels) > 0.01  # the level is drawn per sample
    again = acquisition_noise(v, np.random.default_rng(3), dict(KNOBS, p_noise=1.0))
    assert torch.equal(
        again, acquisition_noise(v, np.random.default_rng(3), dict(KNOBS, p_noise=1.0))
    )
    states = []
    for p in (1e-12, 1.0):  # never applied / always applied: the same draws
        rng = np.random.default_rng(5)
        acquisition_noise(v, rng, dict(KNOBS, p_noise=p))
        states.append(rng.bit_generator.state)
    assert states[0] == states[1]


def test_source_sharpening_is_an_unsharp_mask_of_a_drawn_amount():
    v = _cube(size=16)
    knobs = dict(KNOBS, p_sharpen=1.0)
    out = randomise_source(v, np.random.default_rng(2), knobs, 1.0)
    # a constant far from any edge stays (an unsharp mask of a constant is the constant) ...
    assert float(out[0, 0, 0]) == 0.0 and float(out[22, 24, 20]) == pytest.approx(1.0, abs=1e-4)
    # ... while the edges overshoot, and the gradient energy grows: a sharper head
    assert float(out.max()) > 1.05 and float(out.min()) >= 0.0
    energy = [float(torch.diff(x, dim=0).pow(2).sum()) for x in (v, out)]
    assert energy[1] > 1.2 * energy[0]
    amounts = {
        round(float(randomise_source(v, np.random.default_rng(s), knobs, 1.0).max()), 6)
        for s in range(5)
    }
    assert len(amounts) == 5  # the amount is drawn per sample
    states = []
    for p in (1e-12, 1.0):  # never applied / always applied: the same draws
        rng = np.random.default_rng(5)
        randomise_source(v, rng, dict(KNOBS, p_sharpen=p), 1.0)
        states.append(rng.bit_generator.state)
    assert states[0] == states[1]


def _edge_sigmas(out: torch.Tensor) -> np.ndarray:
    """Per axis, the sd (voxels) of the blur of a cube's face: the rising edge's derivative.

    Across a blurred step the differences are the blur kernel itself, truncated at 3 sd (whose
    variance is 0.973 of the untruncated one).
    """
    centre = [n // 2 for n in out.shape]
    sigmas = []
    for axis in range(3):
        index = list(centre)
        index[axis] = slice(None)
        profile = out[tuple(index)].double().numpy()
        d = np.diff(profile)[: out.shape[axis] // 2]  # the rising face only
        x = np.arange(len(d))
        mean = (d * x).sum() / d.sum()
        sigmas.append(np.sqrt(max((d * (x - mean) ** 2).sum() / d.sum(), 0.0) / 0.973))
    return np.array(sigmas)


def test_per_axis_blur_draws_its_own_sd_along_each_axis_in_mm():
    v = _cube(shape=(48, 48, 48), lo=(16, 16, 16), size=16)
    spacing = 2.0
    knobs = dict(KNOBS, p_blur_axes=1.0, blur_mm=3.0)  # at most 1.5 voxels at 2 mm
    found = np.array(
        [
            _edge_sigmas(randomise_source(v, np.random.default_rng(s), knobs, spacing))
            for s in range(8)
        ]
    )
    bound = knobs["blur_mm"] / spacing
    assert found.max() <= bound * 1.02 and found.max() > 0.6 * bound  # drawn over U(0, bound)
    spread = found.max(1) - found.min(1)  # the axes differ within one sample
    assert (spread > 0.3).sum() >= 5
    # the isotropic source blur, for contrast, blurs the three axes alike
    iso = randomise_source(v, np.random.default_rng(1), dict(KNOBS, p_blur=1.0), spacing)
    np.testing.assert_allclose(_edge_sigmas(iso), _edge_sigmas(iso)[0], atol=1e-6)
    unblurred = _edge_sigmas(v)
    np.testing.assert_allclose(unblurred, 0.0, atol=1e-9)
    states = []
    for p in (1e-12, 1.0):  # never applied / always applied: the same draws
        rng = np.random.default_rng(5)
        randomise_source(v, rng, dict(knobs, p_blur_axes=p), spacing)
        states.append(rng.bit_generator.state)
    assert states[0] == states[1]
    never = randomise_source(v, np.random.default_rng(5), dict(knobs, p_blur_axes=1e-12), spacing)
    assert torch.equal(never, v)


def _head(shape=(48, 48, 48)) -> torch.Tensor:
    """A ball of tissue (intensity 2) on a dark background, with a fine texture of its own."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) - n / 2 for n in shape], indexing="ij"))
    ball = (grid.pow(2).sum(0) < 16**2).float()
    own = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return ball * 2.0 * (1 + 0.1 * own)


def test_texture_replaces_the_heads_own_texture_by_a_drawn_one():
    v = _head()
    knobs = dict(KNOBS, p_texture=1.0, texture_smooth_mm=2.0, texture_mm=1.0, texture_amp=0.2)
    inside = torch.zeros_like(v, dtype=torch.bool)
    inside[18:30, 18:30, 18:30] = True  # deep in the ball: weight 1, away from the edge
    outs = [randomise_source(v, np.random.default_rng(s), knobs, 1.0) for s in range(8)]
    own = v - torch.from_numpy(ndimage.gaussian_filter(v.numpy(), 1.5, mode="nearest"))
    amps = []
    for out in outs:
        assert float(out.min()) >= 0.0
        assert float(out[0, 0, 0]) == 0.0  # the dark background stays dark
        rel = out[inside].double() / out[inside].double().mean() - 1.0
        amps.append(float(rel.std()))
        assert amps[-1] <= knobs["texture_amp"] * 1.05
        # the ball's own fine pattern is gone: the new texture does not correlate with it
        fine = out - torch.from_numpy(ndimage.gaussian_filter(out.numpy(), 1.5, mode="nearest"))
        r = np.corrcoef(fine[inside].numpy(), own[inside].numpy())[0, 1]
        assert abs(r) < 0.2
    assert max(amps) - min(amps) > 0.05  # the amplitude is drawn per sample
    # kept untextured, the same ball's own pattern is there (the check above could fail)
    kept = v - torch.from_numpy(ndimage.gaussian_filter(v.numpy(), 1.5, mode="nearest"))
    assert np.corrcoef(kept[inside].numpy(), own[inside].numpy())[0, 1] > 0.9


def test_texture_of_amplitude_zero_is_the_blur_alone_and_its_draws_are_fixed():
    v = _head()
    knobs = dict(KNOBS, p_texture=1.0, texture_smooth_mm=2.0, texture_mm=1.0, texture_amp=0.0)
    rng = np.random.default_rng(4)
    out = synthetic_texture(v, rng, knobs, 1.0)
    sigma = (0.5 + 0.5 * float(np.random.default_rng(4).uniform(size=4)[1])) * 2.0
    ref = ndimage.gaussian_filter(v.numpy().astype(np.float64), sigma, mode="nearest", truncate=3)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-5)
    assert IN_HEAD < 1.0  # the sources have mean 1: their tissue is textured
    states = []
    for p in (1e-12, 1.0):  # never applied / always applied: the same draws
        rng = np.random.default_rng(5)
        randomise_source(v, rng, dict(knobs, p_texture=p), 1.0)
        states.append(rng.bit_generator.state)
    assert states[0] == states[1]
    before = np.random.default_rng(5)
    assert synthetic_texture(v, before, dict(knobs, p_texture=0.0), 1.0) is v
    assert before.bit_generator.state == np.random.default_rng(5).bit_generator.state
