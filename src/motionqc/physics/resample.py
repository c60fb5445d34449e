"""Rigid (affine) trilinear resampling of a 3-D volume on the CPU, compiled with Numba.

The motion engine resamples the image once per moved pose, which was most of its time with
SimpleITK's ``ResampleImageFilter`` (``benchmarks/README.md``). :func:`resample_linear` does the
same resampling as SimpleITK's linear interpolator with a default pixel value: every output voxel
index ``p`` is mapped through an index-space affine ``M`` to ``q = M p`` in the input; a ``q`` with
any coordinate outside ``[-0.5, size - 0.5)`` (ITK's ``IsInsideBuffer``) takes the fill value;
otherwise the eight neighbours of ``q``, their indices clamped to the grid, are weighted
trilinearly. The source coordinates advance along the last axis by the matrix's last column, so
each voxel costs three additions and eight reads.

With more than one thread the loop over the first axis runs in Numba's ``prange``; with one
thread (the motion pool's worker processes, forked from a parent that may already have used the
threaded kernel) a separately compiled serial kernel runs, so a forked process never enters
Numba's threading layer.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["resample_linear"]


def _kernel(
    src: np.ndarray, m: np.ndarray, fill: float, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    nx, ny, nz = src.shape
    for i in numba.prange(nx):
        for j in range(ny):
            bx = m[0, 0] * i + m[0, 1] * j + m[0, 3]
            by = m[1, 0] * i + m[1, 1] * j + m[1, 3]
            bz = m[2, 0] * i + m[2, 1] * j + m[2, 3]
            for k in range(nz):
                x = bx + m[0, 2] * k
                y = by + m[1, 2] * k
                z = bz + m[2, 2] * k
                if (
                    x < -0.5
                    or x >= nx - 0.5
                    or y < -0.5
                    or y >= ny - 0.5
                    or z < -0.5
                    or z >= nz - 0.5
                ):
                    out[i, j, k] = fill
                    continue
                x0 = math.floor(x)
                y0 = math.floor(y)
                z0 = math.floor(z)
                fx = x - x0
                fy = y - y0
                fz = z - z0
                i0 = int(x0)
                j0 = int(y0)
                k0 = int(z0)
                i1 = i0 + 1
                j1 = j0 + 1
                k1 = k0 + 1
                if i0 < 0:  # only from [-0.5, 0): the edge value, as ITK
                    i0 = 0
                if j0 < 0:
                    j0 = 0
                if k0 < 0:
                    k0 = 0
                if i1 > nx - 1:
                    i1 = nx - 1
                if j1 > ny - 1:
                    j1 = ny - 1
                if k1 > nz - 1:
                    k1 = nz - 1
                c00 = src[i0, j0, k0] * (1 - fz) + src[i0, j0, k1] * fz
                c01 = src[i0, j1, k0] * (1 - fz) + src[i0, j1, k1] * fz
                c10 = src[i1, j0, k0] * (1 - fz) + src[i1, j0, k1] * fz
                c11 = src[i1, j1, k0] * (1 - fz) + src[i1, j1, k1] * fz
                c0 = c00 * (1 - fy) + c01 * fy
                c1 = c10 * (1 - fy) + c11 * fy
                out[i, j, k] = c0 * (1 - fx) + c1 * fx


# Numba's on-disk cache keys a compiled kernel by the Python function and the signature, not by
# ``parallel``: had both been cached, a process could load the threaded code for the serial
# kernel, and a forked worker whose parent had used OpenMP threads (torch) hung in it. Only the
# serial kernel (the pool's workers') is cached; the threaded one compiles once per process.
_SERIAL = numba.njit(cache=True, nogil=True)(_kernel)
_THREADED = numba.njit(cache=False, nogil=True, parallel=True)(_kernel)


def resample_linear(
    volume: np.ndarray,
    matrix: np.ndarray,
    fill: float,
    *,
    threads: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Resample a volume under an index-space affine, linear interpolation, SimpleITK's rules.

    Args:
        volume: ``(X, Y, Z)`` float32 array (C-contiguous).
        matrix: ``(4, 4)`` map from output voxel index to input continuous voxel index, in the
            array's own axis order.
        fill: Value of output voxels that map outside the input (ITK's default pixel value).
        threads: Threads of the loop (at most Numba's configured number); 1 runs the serial kernel.
        out: Output array like ``volume`` (allocated when omitted).

    Returns:
        The resampled ``(X, Y, Z)`` float32 array (``out`` when given).

    Raises:
        ValueError: For a volume that is not a 3-D float32 array, a matrix that is not 4x4 and
            finite, or an ``out`` of another shape or type.
    """
    src = np.ascontiguousarray(volume)
    if src.ndim != 3 or src.dtype != np.float32:
        raise ValueError(f"volume must be a 3-D float32 array, got {src.dtype} {src.shape}")
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f"matrix must be a finite 4x4 array, got shape {m.shape}")
    if out is None:
        out = np.empty_like(src)
    elif out.shape != src.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {src.shape}")
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    if threads == 1:
        _SERIAL(src, m, float(fill), out)
    else:
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _THREADED(src, m, float(fill), out)
        finally:
            numba.set_num_threads(previous)
    return out
