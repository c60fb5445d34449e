"""Two probes behind the encoder experiments (``benchmarks/pretrain_experiments.csv``).

1. **Sharpness**: the released encoder's prediction for each clean sample head blurred by a
   Gaussian of σ = 0, 0.5, 1, 1.5, 2 mm, or sharpened (unsharp mask, amount 0.5 and 1): an encoder
   that reads sharpness as motion predicts more motion for a blurrier clean head.
2. **Identifiability of the label**: Colin27 corrupted by TorchIO's own ``Motion`` at 40 random
   scores in (0.1, 4) mm; with the clean image known, the mean squared change motion made, on the
   1, 2 and 4 mm grids, against the true score (Spearman, and the in-sample R² of an isotonic fit: an
   optimistic ceiling for any predictor that sees only how much the image changed); and at 4 mm,
   the change relative to the image (‖moved − clean‖ / ‖clean‖) before and after one per-step
   geometry draw of the sample recipe applied to both (``geometry_batch``'s zoom, rotation and
   shift, trilinear at the encoder grid): how much of the artefact that interpolation keeps.
3. **Where the offset comes from**: the released encoder on the clean heads skull-stripped (with
   their masks), with the background zeroed, with Rician noise, with the tissue outside the brain
   scaled, and zoomed ×0.8–1.2 in the field of view (the affine scaled): an encoder that reads a
   head filling the field of view as motion predicts more for the zoomed-in head.

    .venv/bin/python benchmarks/probe_encoder_cues.py [--parts 1 2 3] [--encoder FILE]
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio
from scipy.stats import spearmanr
from sklearn.isotonic import IsotonicRegression

from motionqc.data.volumes import preprocess, sample_manifest
from motionqc.evaluation.encoder_test import corrupt_with_torchio, load_native
from motionqc.models.encoder import load_encoder, predict_motion, released_encoder_path
from motionqc.synthetic.augment import affine_of_uniforms, resample_affine
from motionqc.training.recipe import RECIPES

ENCODER = [released_encoder_path()]  # --encoder replaces it

GRIDS = {1.0: (160, 192, 160), 2.0: (80, 96, 80), 4.0: (40, 48, 40)}


def sharpness(files: dict[str, str]) -> None:
    """Print the released encoder's predictions for blurred and sharpened clean heads."""
    model, meta = load_encoder(ENCODER[0])
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
    relative: dict[str, list[float]] = {"as rendered": [], "after the per-step geometry": []}
    knobs, geometry = RECIPES["sample"].augment, np.random.default_rng(1)  # its own draws
    for i in range(n):
        moved, p = corrupt_with_torchio(image, float(rng.uniform(0.1, 4.0)), 1000 + i)
        truth.append(p["score"])
        for g, s in GRIDS.items():
            x = preprocess(moved, g, s).data[0].double()
            change[g].append(float(((x - clean[g]) ** 2).mean()))
        zoom, angles, shift = affine_of_uniforms(geometry.uniform(-1.0, 1.0, size=7), knobs)
        pair = torch.stack([x, clean[4.0]])[:, None].float()
        turned = resample_affine(pair, zoom, angles, shift, 4.0)[:, 0]
        for key, (a, b) in (("as rendered", pair[:, 0]), ("after the per-step geometry", turned)):
            relative[key].append(float((a - b).norm() / b.norm()))
    y = np.asarray(truth)
    for g in GRIDS:
        f = np.asarray(change[g])
        fit = IsotonicRegression().fit(f, y).predict(f)
        r2 = 1 - ((fit - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        rho = spearmanr(f, y).statistic
        print(f"{g:g} mm: Spearman {rho:.3f}, isotonic R² (in-sample) {r2:.3f}, n {n}")
    for key, values in relative.items():
        print(f"4 mm, change relative to the image {key}: mean {np.mean(values):.4f}, n {n}")


def field_of_view(files: dict[str, str], masks: dict[str, str]) -> None:
    """Print the released encoder's predictions for clean heads changed outside the brain or zoomed."""
    model, meta = load_encoder(ENCODER[0])

    def predict(images: list[tio.ScalarImage]) -> list[float]:
        x = [preprocess(i, meta["spacing_mm"], meta["shape"]).data.float() for i in images]
        pred, _ = predict_motion(
            model,
            x,
            bin_range=meta["bin_range"],
            input_intensity=meta["input_intensity"],
            temperature=meta["temperature"],
        )
        return [round(float(v), 2) for v in pred]

    gen = torch.Generator().manual_seed(0)
    for head in ("robex_atlas", "mni152_2009", "colin27"):
        image = load_native(files[head])
        d = image.data.float()
        top = float(torch.quantile(d.flatten()[::7], 0.995))
        zeroed = torch.where(d < 0.05 * top, torch.zeros_like(d), d)
        n1, n2 = (torch.randn(d.shape, generator=gen) * 0.01 * top for _ in range(2))
        variants = {
            "clean": image,
            "background zeroed": tio.ScalarImage(tensor=zeroed, affine=image.affine),
            "Rician noise 1 %": tio.ScalarImage(
                tensor=torch.sqrt((d + n1) ** 2 + n2**2), affine=image.affine
            ),
        }
        mask_file = masks.get(head)
        if isinstance(mask_file, str) and mask_file:
            brain = (load_native(mask_file).data > 0).float()
            if brain.shape == d.shape:
                variants["skull-stripped"] = tio.ScalarImage(tensor=d * brain, affine=image.affine)
                for s in (0.25, 0.5, 1.25):
                    variants[f"outside the brain x{s:g}"] = tio.ScalarImage(
                        tensor=d * brain + s * d * (1 - brain), affine=image.affine
                    )
        for zoom in (0.8, 0.9, 1.1, 1.2):
            affine = image.affine.copy()
            affine[:3, :4] *= zoom
            variants[f"zoom x{zoom:g}"] = tio.ScalarImage(tensor=d, affine=affine)
        pred = predict(list(variants.values()))
        print(head, ", ".join(f"{n}: {p:.2f}" for n, p in zip(variants, pred, strict=True)))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--encoder", default=None, help="encoder file (default: the released one)")
    args = parser.parse_args()
    parts = args.parts
    if args.encoder:
        ENCODER[0] = args.encoder
    torch.set_num_threads(2)
    manifest = sample_manifest()
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    masks = dict(zip(manifest["volume_id"], manifest["mask_path"], strict=True))
    if 1 in parts:
        print("1. the released encoder on clean heads, blurred or sharpened (mm):")
        sharpness(files)
    if 2 in parts:
        print("2. the size of motion's change to Colin27 against its true score:")
        identifiability(files["colin27"])
    if 3 in parts:
        print("3. the released encoder on clean heads changed outside the brain or zoomed (mm):")
        field_of_view(files, masks)


if __name__ == "__main__":
    main()
