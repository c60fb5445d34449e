"""Which part of an unseen head's input a detail encoder reads as motion: swaps with MNI152.

For ``benchmarks/pretrain_experiments.csv`` (the detail rows). Colin27 and the MNI152 template
are both in MNI space, so their encoder inputs (:func:`motionqc.data.detail.encoder_input`,
clean, on the encoder grid) line up voxel for voxel. The script scores, with a trained detail
encoder: each clean sample head as it is; Colin27's head with MNI152's detail channels and the
reverse; Colin27 with MNI152's detail only inside the head (channel 0 above 0.2) or only
outside it; Colin27 with one axis's in-head detail from MNI152; and Colin27 with its detail
shifted by a constant (log units); and each clean head with its own fine texture replaced
(:func:`motionqc.synthetic.texture.synthetic_texture`, the full blur, the largest correlation
length, amplitudes 0, 0.1 and 0.2)::

    .venv/bin/python benchmarks/detail_swap.py build/experiments/detail/encoder.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchio as tio

from motionqc.data.detail import DETAIL_SCALE, encoder_input
from motionqc.data.volumes import sample_manifest
from motionqc.evaluation.encoder_test import load_native
from motionqc.models.encoder import load_encoder, predict_motion
from motionqc.synthetic.texture import synthetic_texture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoder", type=Path, help="an encoder file with detail channels")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, meta = load_encoder(args.encoder)
    if meta["detail_mm"] is None:
        raise SystemExit(f"{args.encoder}: this encoder has no detail channels")
    manifest = sample_manifest()
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    grid = (float(meta["spacing_mm"]), meta["shape"], float(meta["detail_mm"]))
    x = {h: encoder_input(load_native(p), *grid) for h, p in files.items()}

    def score(v: torch.Tensor) -> float:
        s, _ = predict_motion(
            model,
            v[None],
            input_intensity=meta["input_intensity"],
            temperature=meta["temperature"],
        )
        return float(s[0])

    for head, v in x.items():
        print(f"{head} clean, as it is: {score(v):.2f} mm")
    colin, mni = x["colin27"], x["mni152_2009"]
    inside = colin[0] > 0.2
    cases = {}
    mix = colin.clone()
    mix[1:] = mni[1:]
    cases["Colin27's head, MNI152's detail"] = mix
    mix = mni.clone()
    mix[1:] = colin[1:]
    cases["MNI152's head, Colin27's detail"] = mix
    for where, mask in (("inside", inside), ("outside", ~inside)):
        mix = colin.clone()
        mix[1:, mask] = mni[1:, mask]
        cases[f"Colin27, MNI152's detail {where} the head"] = mix
    for axis in range(3):
        mix = colin.clone()
        mix[1 + axis, inside] = mni[1 + axis, inside]
        cases[f"Colin27, MNI152's in-head detail of axis {axis}"] = mix
    for shift in (-1.0, -0.5, 0.5):
        mix = colin.clone()
        mix[1:] += shift / DETAIL_SCALE
        cases[f"Colin27, detail {shift:+.1f} (log)"] = mix
    for name, v in cases.items():
        print(f"{name}: {score(v):.2f} mm", flush=True)
    knobs = {"p_texture": 1.0, "texture_smooth_mm": 1.0, "texture_mm": 1.5}
    for head, path in files.items():
        image = load_native(path)
        data = image.data[0].float() / image.data.float().mean()
        for amp in (0.0, 0.1, 0.2):
            rng = _Fixed()
            new = synthetic_texture(data, rng, dict(knobs, texture_amp=amp), 1.0)
            moved = tio.ScalarImage(tensor=new[None], affine=image.affine)
            print(
                f"{head} retextured, amplitude {amp}: {score(encoder_input(moved, *grid)):.2f} mm"
            )


class _Fixed:
    """A generator stand-in for :func:`synthetic_texture`: applied, full blur and correlation
    length, the amplitude at its maximum, field seed 0."""

    def uniform(self, size: int) -> np.ndarray:
        return np.array([0.0, 1.0, 1.0, 1.0])[:size]

    def integers(self, high: int) -> int:
        return 0


if __name__ == "__main__":
    main()
