"""The detail channels' level on each sample head, clean and under TorchIO's ``Motion``.

For ``benchmarks/pretrain_experiments.csv`` (the detail-channel row): the mean of the three
detail channels (:func:`motionqc.data.detail.encoder_input`, unscaled: the log ratio itself)
inside the head (channel 0 above 0.2 of its mean) and outside it, and the segment (last) axis's
channel minus that mean (what ``detail_norm="axes"`` leaves of it) and each axis's in-head mean, for each sample head at
0, 2 and 4 mm of motion (one draw each)::

    .venv/bin/python benchmarks/detail_levels.py
"""

from __future__ import annotations

import torch

from motionqc.data.detail import DETAIL_SCALE, encoder_input
from motionqc.data.volumes import sample_manifest
from motionqc.evaluation.encoder_test import corrupt_with_torchio, load_native


def main() -> None:
    torch.set_num_threads(2)
    manifest = sample_manifest()
    for head, path in zip(manifest["volume_id"], manifest["path"], strict=True):
        image = load_native(path)
        for target in (0.0, 2.0, 4.0):
            moved, _ = corrupt_with_torchio(image, target, 11)
            x = encoder_input(moved, 4.0, (40, 48, 40), 1.0)
            inside = x[0] > 0.2
            level = x[1:].mean(0) * DETAIL_SCALE
            last = x[3] * DETAIL_SCALE - level
            print(
                f"{head} {target:.0f} mm: in-head {float(level[inside].mean()):.2f}, "
                f"background {float(level[~inside].mean()):.2f}; last axis - mean: in-head "
                f"{float(last[inside].mean()):.3f}, background {float(last[~inside].mean()):.3f}; "
                "in-head per axis "
                + " / ".join(
                    f"{float(x[1 + a][inside].mean() * DETAIL_SCALE):.2f}" for a in range(3)
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
