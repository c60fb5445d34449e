"""Which part of an unseen head's input a detail encoder reads as motion: swaps with MNI152.

For ``benchmarks/pretrain_experiments.csv`` (the detail rows). Colin27 and the MNI152 template
are both in MNI space, so their encoder inputs (:func:`motionqc.data.detail.encoder_input`,
clean, on the encoder grid) line up voxel for voxel. The script scores, with a trained detail
encoder: each clean sample head as it is; Colin27's head with MNI152's detail channels and the
reverse; Colin27 with MNI152's detail only inside the head (channel 0 above 0.2) or only
outside it; Colin27 with one axis's in-head detail from MNI152; and Colin27 with its detail
shifted by a constant (log units)::

    .venv/bin/python benchmarks/detail_swap.py build/experiments/detail/encoder.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from motionqc.data.detail import DETAIL_SCALE, encoder_input
from motionqc.data.volumes import sample_manifest
from motionqc.evaluation.encoder_test import load_native
from motionqc.models.encoder import load_encoder, predict_motion


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


if __name__ == "__main__":
    main()
