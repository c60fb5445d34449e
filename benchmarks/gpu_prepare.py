"""CPU side of the GPU check: everything ``benchmarks/gpu_check.sh`` needs, in one file.

The GPU machine has PyTorch, numpy, scipy, pandas and scikit-learn but not TorchIO, nibabel or
SimpleITK, and no network. So this script, run here (``make gpu-prepare``), writes
``build/gpu_check/inputs.pt`` (≤ 40 MB, loaded there with ``weights_only=True``):

- the bundled heads preprocessed as notebook 03's paper path preprocesses them (1 mm,
  160×192×160, divided by their mean; float16);
- the rows of that path's parameter table for them (:func:`motionqc.synthetic.motion_sets.build_parameter_table`,
  the authors' sampler) and, per row, the parameters :class:`motionqc.synthetic.heads.MotionSourceSet`
  hands to :class:`motionqc.physics.device.DeviceMotion` (motion padded to the most transforms,
  gamma, bias-field coefficients, rescale maximum) and the flip it draws
  (:meth:`MotionSourceSet.parameters`);
- a reference for the CUDA motion: a few rows corrupted here by the CPU path at 2 mm;
- the CPU loader's cost (the flip + elastic deformation :class:`MotionSourceSet` does per 1 mm
  sample, seconds per volume on one core of this machine), which the check sets beside the GPU's
  throughput to say how many loader cores would keep it fed.

    .venv/bin/python benchmarks/gpu_prepare.py [--rows 256] [--out build/gpu_check]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from motionqc.data.volumes import preprocess, sample_manifest
from motionqc.physics.motion import simulate_motion
from motionqc.synthetic.heads import MotionSourceSet
from motionqc.synthetic.motion_sets import build_parameter_table

HEADS = ("robex_atlas", "mni152_2009", "colin27")
GRID_1MM = (160, 192, 160)
GRID_2MM = (80, 96, 80)


def prepare(out: Path, rows: int = 256, reference_rows: int = 2, loader_reps: int = 3) -> Path:
    """Write ``out/inputs.pt`` and ``out/inputs.json`` (what it holds, for a reader).

    Args:
        out: Output folder.
        rows: Parameter rows (samples) to carry.
        reference_rows: Rows corrupted on this CPU at 2 mm, the CUDA path's reference.
        loader_reps: Samples timed through the CPU loader.

    Returns:
        The ``inputs.pt`` path.
    """
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    manifest = sample_manifest().set_index("volume_id")
    heads = [h for h in HEADS if h in manifest.index]
    images = {h: preprocess(manifest.loc[h, "path"], 1.0, GRID_1MM) for h in heads}
    per_head = -(-rows // len(heads))
    table = build_parameter_table(heads, per_head, seed=0, splits={h: "train" for h in heads}).iloc[
        :rows
    ]
    dataset = MotionSourceSet(table.reset_index(drop=True), images, augment=True)
    rows_params = [dataset.parameters(i) for i in range(len(dataset))]
    params = {k: [r[k] for r in rows_params] for k in rows_params[0]}
    head_index = [heads.index(s) for s in dataset.table["source"]]
    loader_s = []
    for i in range(min(loader_reps, len(dataset))):
        t0 = time.perf_counter()
        dataset[i]  # flip + elastic deformation at 1 mm: the CPU loader's work per sample
        loader_s.append(time.perf_counter() - t0)
    ref_idx = [i for i in range(len(table)) if int(params["n"][i]) > 0][:reference_rows]
    small = {h: preprocess(manifest.loc[h, "path"], 2.0, GRID_2MM) for h in heads}
    ref_in, ref_out = [], []
    for i in ref_idx:
        k = int(params["n"][i])
        image = small[heads[head_index[i]]]
        ref_in.append(image.data[0].float())
        ref_out.append(
            simulate_motion(
                image.data[0].float(),
                params["degrees"][i][:k].numpy(),
                params["translation"][i][:k].numpy(),
                params["times"][i][:k].numpy(),
                np.asarray(image.affine),
                backend="sitk",
            )
        )
    payload = {
        "heads": torch.stack([images[h].data[0].half() for h in heads]),
        "affines": torch.as_tensor(np.stack([np.asarray(images[h].affine) for h in heads])),
        "head_index": torch.as_tensor(head_index, dtype=torch.int64),
        "flip": torch.stack(params["flip"]),
        "label": torch.stack(params["label"]),
        "n": torch.stack(params["n"]),
        "degrees": torch.stack(params["degrees"]),
        "translation": torch.stack(params["translation"]),
        "times": torch.stack(params["times"]),
        "gamma": torch.stack(params["gamma"]),
        "bias": torch.stack(params["bias"]),
        "rescale_max": torch.stack(params["rescale_max"]),
        "reference": {
            "rows": torch.as_tensor(ref_idx, dtype=torch.int64),
            "affines": torch.as_tensor(
                np.stack([np.asarray(small[heads[head_index[i]]].affine) for i in ref_idx])
            ),
            "inputs": torch.stack(ref_in),
            "outputs": torch.stack(ref_out),
        },
    }
    meta = {
        "heads": heads,
        "rows": len(table),
        "grid_1mm": list(GRID_1MM),
        "grid_2mm": list(GRID_2MM),
        "loader_s_per_volume_one_core": float(np.median(loader_s)),
        "loader_machine": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
    }
    payload["meta"] = json.dumps(meta)
    path = out / "inputs.pt"
    torch.save(payload, path)
    (out / "inputs.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/gpu_check"))
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--reference-rows", type=int, default=2)
    args = parser.parse_args()
    path = prepare(args.out, args.rows, args.reference_rows)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
