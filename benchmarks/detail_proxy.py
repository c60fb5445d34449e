"""Can the detail channels' summaries of two training heads read motion on a third? No training.

For ``benchmarks/pretrain_experiments.csv`` (the per-axis blur row). Each training head (ROBEX,
MNI152) is corrupted at its own resolution by motionqc's simulation (TorchIO's model) at
``--per-head`` scores drawn from U(0, 4) mm (the first four motion-free), and Colin27 by
TorchIO's own ``Motion`` at the unseen-head test's scores (two draws each). Each volume goes
through the detail channels of :func:`motionqc.data.detail.detail_channels` (1 mm grid, pooled
onto 4 mm), optionally after a fixed Gaussian blur of σ mm (a band limit common to every
head); per axis the in-head mean (log units), the background mean and the in-head 10th, 50th and
90th percentiles summarise them. A ridge regression (scikit-learn, α by its built-in
cross-validation) fitted on the two training heads then predicts Colin27: its R² and Spearman
(:func:`motionqc.evaluation.encoder_test.split_metrics`) and its reading of the clean head,
and each head's per-axis in-head mean clean and above 3 mm::

    .venv/bin/python benchmarks/detail_proxy.py
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
import torchio as tio
from sklearn.linear_model import RidgeCV

from motionqc.data.detail import DETAIL_SCALE, detail_channels
from motionqc.data.volumes import preprocess, sample_manifest
from motionqc.evaluation.encoder_test import load_native, split_metrics, torchio_corruptions
from motionqc.physics.motion import simulate_motion
from motionqc.synthetic.augment import gaussian_blur
from motionqc.synthetic.parameters import sample_scored_motion

SUMMARIES = {"in-head means": slice(0, 3), "+ background": slice(0, 6), "+ quantiles": slice(None)}


def summaries(image: tio.ScalarImage, sigmas_mm: tuple[float, ...]) -> dict[float, np.ndarray]:
    """Per blur σ: 3 in-head means, 3 background means, 9 in-head percentiles (log units)."""
    fine = preprocess(image, 1.0, (160, 192, 160)).data[0].float()
    inside = torch.nn.functional.avg_pool3d(fine[None, None], 4)[0, 0] > 0.2
    out = {}
    for sigma in sigmas_mm:
        x = gaussian_blur(fine, sigma) if sigma > 0 else fine
        d = detail_channels(x, 4) * DETAIL_SCALE
        f = [float(d[a][inside].mean()) for a in range(3)]
        f += [float(d[a][~inside].mean()) for a in range(3)]
        f += [float(torch.quantile(d[a][inside], q)) for a in range(3) for q in (0.1, 0.5, 0.9)]
        out[sigma] = np.array(f)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-head", type=int, default=40, help="volumes per training head")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.7, 1.0, 1.5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = sample_manifest()
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    sigmas = tuple(args.sigmas)
    heads, truth, feats = [], [], []
    for h_idx, head in enumerate(("robex_atlas", "mni152_2009"), start=1):
        image = load_native(files[head])
        rng = np.random.default_rng(h_idx)
        for i in range(args.per_head):
            target = 0.0 if i < 4 else float(rng.uniform(0.0, 4.0))
            p = sample_scored_motion(
                target, h_idx * 1000 + i, affine=image.affine, shape=image.shape[1:]
            )
            x = image.data[0].float()
            if target > 0:
                x = simulate_motion(x, p["degrees"], p["translation"], p["times"], image.affine)
            heads.append(head)
            truth.append(float(p["score"]))
            feats.append(summaries(tio.ScalarImage(tensor=x[None], affine=image.affine), sigmas))
    for head, _, _, moved, p in torchio_corruptions({"colin27": files["colin27"]}, draws=2):
        heads.append(head)
        truth.append(float(p["score"]))
        feats.append(summaries(moved, sigmas))
    h, y = np.array(heads), np.array(truth)
    test = h == "colin27"
    for sigma in sigmas:
        x = np.stack([f[sigma] for f in feats])
        for name, cols in SUMMARIES.items():
            model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x[~test][:, cols], y[~test])
            pred, yt = model.predict(x[test][:, cols]), y[test]
            m = split_metrics(pd.DataFrame({"true": yt, "pred": pred, "std": np.nan}))
            clean = pred[yt < 0.01].mean()
            print(
                f"blur {sigma} mm, {name}: Colin27 R2 {m['r2']:.2f}, "
                f"Spearman {m['spearman']:.2f}, clean {clean:.2f} mm"
            )
        for head in ("robex_atlas", "mni152_2009", "colin27"):
            clean = x[(h == head) & (y < 0.01)][0][:3]
            moved = x[(h == head) & (y > 3)].mean(0)[:3]
            print(
                f"  {head}: in-head per axis clean {np.round(clean, 2)}, above 3 mm {np.round(moved, 2)}"
            )


if __name__ == "__main__":
    main()
