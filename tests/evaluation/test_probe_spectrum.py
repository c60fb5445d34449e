"""benchmarks/probe_encoder_cues.py part 4: the change's spectrum lands in the right shells."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from probe_encoder_cues import spectrum_features  # noqa: E402


def test_a_plane_wave_fills_one_radial_and_one_axis_shell():
    # cos at 0.25 cycles/voxel along the first axis: |k_x| = 0.5 of Nyquist, |k| / sqrt(3) = 0.29
    x = torch.arange(32, dtype=torch.float64)
    wave = torch.cos(2 * np.pi * 0.25 * x)[:, None, None].expand(32, 16, 8)
    f = spectrum_features(wave)
    radial, ax, ay, az = f[:8], f[8:12], f[12:16], f[16:20]
    total = np.log(float((torch.fft.fftn(wave).abs() ** 2).sum()))
    assert np.argmax(radial) == 2 and np.isclose(radial[2], total)
    assert np.argmax(ax) == 2 and np.isclose(ax[2], total)
    assert np.isclose(ay[0], total) and np.isclose(az[0], total)  # constant along y and z
    assert (np.delete(radial, 2) < total - 20).all() and (np.delete(ax, 2) < total - 20).all()
    # Parseval: the shells of one kind add up to the image's energy
    n = wave.numel()
    assert np.isclose(np.exp(radial).sum() / n, float((wave**2).sum()))
