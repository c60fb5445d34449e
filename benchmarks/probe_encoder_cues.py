"""Two probes behind the encoder experiments (``benchmarks/pretrain_experiments.csv``).

1. **Sharpness**: the released encoder's prediction for each clean sample head blurred by a
   Gaussian of σ = 0, 0.5, 1, 1.5, 2 mm, or sharpened (unsharp mask, amount 0.5 and 1): an encoder
   that reads sharpness as motion predicts more motion for a blurrier clean head.
2. **Identifiability of the label**: Colin27 corrupted by TorchIO's own ``Motion`` at 40 random
   scores in (0.1, 4) mm; with the clean image known, the mean squared change motion made, on the
   1, 2 and 4 mm grids, against the true score (Spearman, and the in-sample R² of an isotonic fit: an
   optimistic ceiling for any predictor that sees only how much the image changed).

    .venv/bin/python benchmarks/probe_encoder_cues.py
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio
from scipy.stats import spearmanr
from sklearn.isotonic import IsotonicRegression

from motionqc.data import preprocess, sample_manifest
from motionqc.encoder import load_encoder, predict_motion, released_encoder_path
from motionqc.stages.pretrain import corrupt_with_torchio, load_native

GRIDS = {1.0: (160, 192, 160), 2.0: (80, 96, 80), 4.0: (40, 48, 40)}


def sharpness(files: dict[str, str]) -> None:
    """Print the released encoder's predictions for blurred and sharpened clean heads."""
    model, meta = load_encoder(released_encoder_path())
    for head in ("robex_atlas", "mni152_2009", "colin27"):
        image = load_native(files[head])
        variants = {f"blur {s:g} mm": s for s in (0.0, 0.5, 1.0, 1.5, 2.0)}
        inputs, names = [], []
        for name, sigma in variants.items():
            blurred = image if sigma == 0 else tio.Blur(std=sigma)(image)
            inputs.append(preprocess(blurred, meta["spacing_mm"], meta["shape"]).data.float())
            names.append(name)
        smooth = tio.Blur(std=1.0)(image)
        for amount in (0.5, 1.0):
            sharp = tio.ScalarImage(
                tensor=image.data + amount * (image.data - smooth.data), affine=image.affine
            )
            inputs.append(preprocess(sharp, meta["spacing_mm"], meta["shape"]).data.float())
            names.append(f"sharpen {amount:g}")
        pred, _ = predict_motion(
            model,
            inputs,
            bin_range=meta["bin_range"],
            input_intensity=meta["input_intensity"],
            temperature=meta["temperature"],
        )
        print(head, ", ".join(f"{n}: {float(p):.2f}" for n, p in zip(names, pred, strict=True)))


def identifiability(path: str, n: int = 40) -> None:
    """Print how well the size of the motion's change to the image ranks the true score."""
    image = load_native(path)
    clean = {g: preprocess(image, g, s).data[0].double() for g, s in GRIDS.items()}
    rng = np.random.default_rng(0)
    truth, change = [], {g: [] for g in GRIDS}
    for i in range(n):
        moved, p = corrupt_with_torchio(image, float(rng.uniform(0.1, 4.0)), 1000 + i)
        truth.append(p["score"])
        for g, s in GRIDS.items():
            x = preprocess(moved, g, s).data[0].double()
            change[g].append(float(((x - clean[g]) ** 2).mean()))
    y = np.asarray(truth)
    for g in GRIDS:
        f = np.asarray(change[g])
        fit = IsotonicRegression().fit(f, y).predict(f)
        r2 = 1 - ((fit - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        rho = spearmanr(f, y).statistic
        print(f"{g:g} mm: Spearman {rho:.3f}, isotonic R² (in-sample) {r2:.3f}, n {n}")


def main() -> None:
    torch.set_num_threads(2)
    manifest = sample_manifest()
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    print("1. the released encoder on clean heads, blurred or sharpened (mm):")
    sharpness(files)
    print("2. the size of motion's change to Colin27 against its true score:")
    identifiability(files["colin27"])


if __name__ == "__main__":
    main()
