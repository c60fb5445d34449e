"""Where the time of one ``simulate_motion`` call goes, beside TorchIO's ``Motion`` on the same input.

Times each stage of the CPU path (``backend="auto"``: the Numba resampler) on the MNI152 2009
sample head at 1 mm (182x218x182) with ``n`` transforms — the resampling of each moved copy (and,
for comparison, the same resampling by SimpleITK, the backend ``"sitk"``), the partial DFT (matrix
product) over each copy's k-space segment, the inverse real FFT — and the same stages of TorchIO 1.x's ``Motion`` (its resampling of each copy, one complex
3D FFT per copy in torch, the inverse FFT), each the best of ``--repeats`` runs in this process. The table it
prints is the profile kept in ``benchmarks/README.md``.

    .venv/bin/python benchmarks/profile_motion.py [--n 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio

from motionqc.data.volumes import preprocess, sample_manifest
from motionqc.physics import motion
from motionqc.physics.resample import resample_linear


def best(fn, repeats: int) -> float:
    """Best wall time of ``fn`` over ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Print the stage table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = sample_manifest().set_index("volume_id").loc["mni152_2009", "path"]
    image = preprocess(path, 1.0, (182, 218, 182), normalise=False)
    data = image.data[0].float()
    rng = np.random.default_rng(0)
    deg = rng.uniform(-4, 4, (args.n, 3))
    tra = rng.uniform(-4, 4, (args.n, 3))
    times = np.sort(rng.uniform(0.05, 0.95, args.n))
    affine = np.asarray(image.affine)
    threads = torch.get_num_threads()
    array = np.ascontiguousarray(data.numpy())
    size = array.shape[-1]
    lines = int(np.prod(array.shape[:-1]))
    mats = motion._index_transforms(deg, tra, affine)
    weights = motion.kspace_weights(times, size)
    rows: list[tuple[str, str, float]] = []

    total = best(lambda: motion.simulate_motion(data, deg, tra, times, affine), args.repeats)
    rows.append(("motionqc", "whole call", total))
    fill = float(array.min())
    buffer = np.empty_like(array)
    resample = best(
        lambda: [resample_linear(array, m, fill, threads=threads, out=buffer) for m in mats],
        args.repeats,
    )
    rows.append(("motionqc", f"resample {args.n} moved copies (Numba, linear)", resample))
    sitk_image = sitk.GetImageFromArray(array)
    resample = best(
        lambda: [
            motion._resample_sitk(sitk_image, motion._REVERSE @ m @ motion._REVERSE, fill, threads)
            for m in mats
        ],
        args.repeats,
    )
    rows.append(("motionqc", "(not in the call) the same by SimpleITK, backend 'sitk'", resample))
    moved = sitk.GetArrayFromImage(
        motion._resample_sitk(
            sitk_image, motion._REVERSE @ mats[0] @ motion._REVERSE, fill, threads
        )
    )
    flat = torch.from_numpy(moved).view(lines, size)

    def dfts() -> None:
        for s in range(len(weights)):
            nz = np.flatnonzero(weights[s])
            if nz.size:
                lo, hi = int(nz[0]), int(nz[-1]) + 1
                torch.mm(flat, motion._dft_columns(size, weights[s], lo, hi))

    rows.append(
        ("motionqc", f"partial DFTs over {args.n + 1} segments (matmul)", best(dfts, args.repeats))
    )
    acc = torch.zeros((lines, size // 2 + 1), dtype=torch.complex64)
    rows.append(
        (
            "motionqc",
            "inverse real FFT",
            best(lambda: torch.fft.irfft(acc, n=size, dim=-1), args.repeats),
        )
    )

    subject = tio.ScalarImage(tensor=data[None], affine=affine)
    transform = tio.Motion(degrees=deg, translation=tra, times=times, image_interpolation="linear")
    rows.append(("torchio", "whole call", best(lambda: transform(subject), args.repeats)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sitk_tio = tio.data.io.nib_to_sitk(data[None], affine)
    rows.append(
        (
            "torchio",
            "wrap the array for SimpleITK",
            best(lambda: tio.data.io.nib_to_sitk(data[None], affine), args.repeats),
        )
    )
    transforms = transform.get_rigid_transforms(np.asarray(deg), np.asarray(tra), sitk_tio)
    rows.append(
        (
            "torchio",
            f"resample {args.n} moved copies",
            best(lambda: transform.resample_images(sitk_tio, transforms, "linear"), args.repeats),
        )
    )
    cube = torch.from_numpy(np.ascontiguousarray(moved.transpose()))
    fft = best(lambda: transform.fourier_transform(cube), args.repeats)
    rows.append(("torchio", f"complex 3D FFT x {args.n + 1} copies (torch)", fft * (args.n + 1)))
    spectrum = transform.fourier_transform(cube)
    rows.append(
        (
            "torchio",
            "inverse complex 3D FFT",
            best(lambda: transform.inv_fourier_transform(spectrum), args.repeats),
        )
    )

    print(f"1 mm, 182x218x182, n = {args.n}, {threads} torch threads, best of {args.repeats}")
    print("| implementation | stage | seconds | share of its call |")
    print("|---|---|---|---|")
    whole = {impl: s for impl, stage, s in rows if stage == "whole call"}
    for impl, stage, sec in rows:
        outside = stage == "whole call" or stage.startswith("(not in the call)")
        share = "" if outside else f"{100 * sec / whole[impl]:.0f} %"
        print(f"| {impl} | {stage} | {sec:.3f} | {share} |")


if __name__ == "__main__":
    main()
