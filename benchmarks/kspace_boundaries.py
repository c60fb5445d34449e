"""Does k-space show the motion's segment boundaries without any learned anatomy? No training.

For the #16 note of stop 40: a search for a cue of motion that two training heads cannot
confound with anatomy. TorchIO's ``Motion`` fills each k-space segment along the last axis with
one head pose, so a pose change between two segments is a jump between two neighbouring planes
``k_z``, ``k_z + 1``: an in-plane translation ``d`` multiplies the later plane by a linear phase
``exp(-2πi k·d)``. Phase correlation of the two planes (the inverse FFT of their normalised
cross-power spectrum) peaks at that in-plane shift, and at zero between two planes of one pose.

For each sample head at its own resolution (canonical orientation), clean and under TorchIO's
own ``Motion`` at 0.6, 1.5 and 3 mm (one draw each), the script prints the share of plane pairs
whose phase-correlation peak is off zero, the mean peak shift (mm), and the shifts of the first
70 plane pairs::

    .venv/bin/python benchmarks/kspace_boundaries.py

What it showed (stop 40, 20 s on 2 cores): the clean ROBEX and MNI152 have no plane pair off
zero, but at 3 mm of motion only one pair of each is (the peak moves by whole voxels, and most
pose changes are smaller than a voxel in-plane), while the clean Colin27 has 12 % of its pairs
off zero by 1–2 mm over a band of planes (a property of that head on its grid, not motion):
too coarse to read the score, and confounded by the head again. Not pursued.
"""

from __future__ import annotations

import numpy as np

from motionqc.data.volumes import sample_manifest
from motionqc.evaluation.encoder_test import corrupt_with_torchio, load_native

SCORES = (0.0, 0.6, 1.5, 3.0)


def boundary_shifts(volume: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """In-plane shift (mm) of each pair of neighbouring k-space planes along the last axis.

    Args:
        volume: ``(X, Y, Z)`` image.
        spacing: Voxel size per axis, mm.

    Returns:
        ``(Z // 2,)``: the length of the phase-correlation peak's offset from zero, per pair of
        neighbouring real-FFT planes.
    """
    v = np.asarray(volume, np.float64)
    v = v / v.mean()
    spectrum = np.fft.fft2(np.fft.rfft(v, axis=2), axes=(0, 1))
    nx, ny, nk = spectrum.shape
    shifts = []
    for k in range(nk - 1):
        cross = spectrum[:, :, k] * np.conj(spectrum[:, :, k + 1])
        mag = np.abs(cross)
        surface = np.abs(np.fft.ifft2(cross / (mag + 1e-3 * mag.mean())))
        i, j = np.unravel_index(np.argmax(surface), surface.shape)
        dx = ((i + nx // 2) % nx - nx // 2) * spacing[0]
        dy = ((j + ny // 2) % ny - ny // 2) * spacing[1]
        shifts.append(np.hypot(dx, dy))
    return np.array(shifts)


def main() -> None:
    manifest = sample_manifest()
    np.set_printoptions(precision=1, linewidth=200)
    for head, path in zip(manifest["volume_id"], manifest["path"], strict=True):
        image = load_native(path)
        spacing = np.abs(np.diag(image.affine)[:3])
        for target in SCORES:
            moved, _ = corrupt_with_torchio(image, target, 11)
            s = boundary_shifts(moved.data[0].numpy(), spacing)
            print(
                f"{head} {target:g} mm: off-zero share {(s > 0).mean():.2f}, "
                f"mean shift {s.mean():.2f} mm",
                flush=True,
            )
            print("   ", s[:70])


if __name__ == "__main__":
    main()
