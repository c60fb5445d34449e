"""The compiled resampler against SimpleITK's ResampleImageFilter (linear, default pixel value)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from motionqc.physics.resample import resample_linear


def sitk_resample(volume: np.ndarray, matrix: np.ndarray, fill: float) -> np.ndarray:
    """SimpleITK itself: the array's (X, Y, Z) index map expressed in its (z, y, x) image order."""
    image = sitk.GetImageFromArray(volume)  # sitk index (a, b, c) = array[c, b, a]
    rev = np.eye(4)[[2, 1, 0, 3]]
    m = rev @ matrix @ rev
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(m[:3, :3].ravel().tolist())
    transform.SetTranslation(m[:3, 3].tolist())
    out = sitk.Resample(image, image, transform, sitk.sitkLinear, float(fill), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def rigid(angles_deg, shift, shape) -> np.ndarray:
    """An index-space rotation about the grid centre plus a shift (voxels)."""
    r = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    c = (np.asarray(shape) - 1) / 2
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(shift)
    return m


@pytest.mark.parametrize(
    "angles,shift",
    [
        ((0, 0, 0), (0, 0, 0)),
        ((3.0, -2.0, 1.5), (1.3, -2.2, 0.7)),
        ((25.0, 10.0, -40.0), (4.5, 0.0, -6.25)),  # much of the output maps outside the input
        ((0, 0, 0), (0.5, -0.5, 0.25)),  # half-voxel shifts: the edges' clamping and the fill
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_same_voxels_as_simpleitk(angles, shift, threads):
    rng = np.random.default_rng(0)
    volume = (rng.random((23, 31, 17)) + 0.25).astype(np.float32)
    matrix = rigid(angles, shift, volume.shape)
    fill = -3.0
    out = resample_linear(volume, matrix, fill, threads=threads)
    expected = sitk_resample(volume, matrix, fill)
    assert out.dtype == np.float32 and out.shape == volume.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    if angles[0] == 25.0:
        assert (out == fill).mean() > 0.1  # the fill really is exercised


def test_identity_returns_the_volume_and_out_is_reused():
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    buffer = np.zeros_like(volume)
    out = resample_linear(volume, np.eye(4), 0.0, out=buffer)
    assert out is buffer
    np.testing.assert_array_equal(out, volume)


def test_bad_inputs_are_refused():
    volume = np.zeros((4, 5, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="float32"):
        resample_linear(volume.astype(np.float64), np.eye(4), 0.0)
    with pytest.raises(ValueError, match="4x4"):
        resample_linear(volume, np.eye(3), 0.0)
    with pytest.raises(ValueError, match="finite"):
        resample_linear(volume, np.full((4, 4), np.nan), 0.0)
    with pytest.raises(ValueError, match="out must be"):
        resample_linear(volume, np.eye(4), 0.0, out=np.zeros((4, 5, 5), np.float32))


_WARM = """
import numpy as np
from motionqc.physics.resample import resample_linear
v = np.zeros((8, 8, 8), np.float32)
resample_linear(v, np.eye(4), 0.0, threads=2)  # the threaded kernel first, then the serial one
resample_linear(v, np.eye(4), 0.0)
"""

_FORKED = """
import multiprocessing as mp, sys
import numpy as np, torch
torch.set_num_threads(2)
a = torch.randn(96, 96, 96)
float((a @ a).sum())  # the parent's OpenMP threads have run, as the pool's parent's have
from motionqc.physics.resample import resample_linear
def job():
    resample_linear(np.zeros((8, 8, 8), np.float32), np.eye(4), 0.0)  # a worker: one thread
p = mp.get_context("fork").Process(target=job, daemon=True)
p.start()
p.join(60)
sys.exit(0 if p.exitcode == 0 else 3)
"""


def test_a_forked_worker_reads_the_serial_kernel_from_the_cache(tmp_path):
    """A process that used both kernels leaves a cache a forked worker runs from (no hang).

    Cached under one key, the threaded code was what the next process loaded for the serial
    kernel, and a worker forked after torch's OpenMP threads hung in Numba's threading layer.
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", _WARM], env=env, check=True, timeout=300)
    done = subprocess.run([sys.executable, "-c", _FORKED], env=env, timeout=300)
    assert done.returncode == 0, "the forked worker did not finish its serial resampling"
