"""benchmarks/probe_encoder_cues.py part 4: the change's spectrum lands in the right shells."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from probe_encoder_cues import pose_of_each_plane, segment_profile, spectrum_features  # noqa: E402


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


def test_the_segment_profile_puts_a_wave_along_the_last_axis_in_its_bin():
    # cos at 0.125 cycles/voxel along the last axis: |k_z| = 0.25 of Nyquist -> bin 4 of 16,
    # constant across it -> perpendicular shell 0
    z = torch.arange(32, dtype=torch.float64)
    wave = torch.cos(2 * np.pi * 0.125 * z)[None, None, :].expand(16, 8, 32)
    f = segment_profile(wave).reshape(16, 4)
    total = np.log(float((torch.fft.fftn(wave).abs() ** 2).sum()))
    assert np.unravel_index(np.argmax(f), f.shape) == (4, 0) and np.isclose(f[4, 0], total)
    assert (np.delete(f.ravel(), 4 * 4) < total - 20).all()
    # a wave at 0.25 cycles/voxel along the first axis is constant along z: |k_z| bin 0, and
    # sqrt(k_x² + k_y²) / sqrt(2) = 0.5 / sqrt(2) = 0.35 -> perpendicular shell 1
    x = torch.arange(32, dtype=torch.float64)
    across = torch.cos(2 * np.pi * 0.25 * x)[:, None, None].expand(32, 8, 16)
    g = segment_profile(across).reshape(16, 4)
    assert np.unravel_index(np.argmax(g), g.shape) == (0, 1)
    # Parseval: the bins add up to the image's energy
    assert np.isclose(np.exp(f).sum() / wave.numel(), float((wave**2).sum()))


def test_pose_of_each_plane_matches_what_torchio_motion_writes():
    # TorchIO's output keeps the clean spectrum exactly on the planes whose mirror the
    # motion-free pose fills too (it keeps the real part), and changes every other plane
    import torchio as tio

    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.normal(size=(1, 24, 20, 32))).float()
    image = tio.ScalarImage(tensor=data, affine=np.eye(4))
    clean = torch.fft.fftshift(torch.fft.fftn(data[0].double()))
    for times in ([0.3, 0.7], [0.2, 0.4, 0.8], [0.1, 0.3, 0.45], [0.2, 0.43]):
        n = len(times)
        motion = tio.Motion(
            degrees=np.zeros((n, 3)),
            translation=np.asarray([[2.0 + i, -1.5 * i, 3.0] for i in range(n)]),
            times=np.asarray(times),
            image_interpolation="linear",
        )
        moved = torch.fft.fftshift(torch.fft.fftn(motion(image).data[0].double()))
        poses = pose_of_each_plane(np.asarray(times), 32)
        assert set(poses.tolist()) == set(range(n + 1))
        for z in range(1, 32):  # plane 0 has no mirror in the shifted spectrum
            mirror = 32 - z
            error = float((moved[..., z] - clean[..., z]).abs().max() / clean[..., z].abs().max())
            if poses[z] == 0 and poses[mirror] == 0:
                assert error < 1e-4, (times, z)
            else:  # the real part mixes each plane with its mirror
                assert error > 1e-2, (times, z)
