"""Probes behind the encoder experiments (``benchmarks/pretrain_experiments.csv``).

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
4. **What the change's spectrum tells**: Colin27 corrupted as in 2 (``--n`` random scores), with
   the clean image known: the log energy of ``moved − clean`` in 8 radial k-space shells and in 4
   shells of each axis's frequency, on the 1 and 4 mm grids, regressed on the true score with
   5-fold cross-validation (ridge on the 20 features; a random forest, seed 0): the out-of-fold R²
   is what a predictor that sees the artefact itself, separated from the anatomy, reaches — a
   reference for the unseen-head R² of an encoder, which must also tell the artefact from the head.

5. **What the change's profile along the segment axis tells**: as 4, with features that follow
   the motion model's own structure: ``Motion`` fills k-space in segments along the image's last
   array axis, so the log energy of ``moved − clean`` in 16 bins of ``|k|`` along that axis, each
   split into 4 shells of the perpendicular frequency (64 features), on the 1, 2 and 4 mm grids,
   regressed on the true score with the same 5-fold cross-validation: if this reaches well above
   part 4, the segments' energies carry the score and a grid that keeps them matters; if not, the
   score itself (RMS between consecutive poses, blind to when each pose was held) is the limit.

6. **How much of the score the image records** (motion parameters only, no image simulated):
   3,000 draws of the recipe's sampler on Colin27's grid. Each k-space plane along the last axis
   holds one pose (TorchIO's segments and its swap of the motion-free pose into the centre); the
   image records how far each pose lies from that centre pose, weighted by the clean head's energy
   in the planes it fills. The displacement ``sqrt(Σ_planes w · RMS(pose, centre pose)²)``, with
   ``w`` the planes' energy or their gradient energy (``|k|²``-weighted: what a small motion
   changes; also that within the band an ideal low-pass to the 2 or 4 mm grid keeps), against
   the true score (out-of-fold isotonic fit, 5 folds), beside the plain mean
   displacement of the poses (no k-space weighting): a scalar the image carries and how much of
   the score it explains.

    .venv/bin/python benchmarks/probe_encoder_cues.py [--parts 1 2 3 4 5 6] [--encoder FILE] [--n 120]
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


def spectrum_features(change: torch.Tensor, shells: int = 8, axis_shells: int = 4) -> np.ndarray:
    """Log energy of a 3-D change image in radial k-space shells and in shells of each axis.

    Args:
        change: ``(X, Y, Z)`` difference image.
        shells: Radial shells of the normalised frequency ``|k| / sqrt(3)`` (each axis in [0, 1]).
        axis_shells: Shells of each axis's own ``|k_axis|``.

    Returns:
        ``shells + 3 * axis_shells`` values, ``log(energy + 1e-12)``.
    """
    power = torch.fft.fftn(change.double()).abs() ** 2
    freqs = [torch.fft.fftfreq(n, d=0.5).abs().double() for n in change.shape]  # in [0, 1]
    kx, ky, kz = torch.meshgrid(*freqs, indexing="ij")
    radius = torch.sqrt(kx**2 + ky**2 + kz**2) / np.sqrt(3.0)
    out = []
    for edges, k in [(shells, radius)] + [(axis_shells, a) for a in (kx, ky, kz)]:
        idx = torch.clamp((k * edges).long(), max=edges - 1)
        energy = torch.zeros(edges, dtype=torch.float64).index_add_(
            0, idx.flatten(), power.flatten()
        )
        out.extend(energy.tolist())
    return np.log(np.asarray(out) + 1e-12)


def segment_profile(change: torch.Tensor, last_bins: int = 16, perp_bins: int = 4) -> np.ndarray:
    """Log energy of a 3-D change image by frequency along its last axis and across it.

    Args:
        change: ``(X, Y, Z)`` difference image; ``Z`` is the axis ``Motion`` segments k-space along.
        last_bins: Bins of ``|k_z|`` (normalised to [0, 1] at Nyquist).
        perp_bins: Shells of ``sqrt(k_x² + k_y²) / sqrt(2)`` within each of them.

    Returns:
        ``last_bins * perp_bins`` values (``|k_z|`` bin major), ``log(energy + 1e-12)``.
    """
    power = torch.fft.fftn(change.double()).abs() ** 2
    freqs = [torch.fft.fftfreq(n, d=0.5).abs().double() for n in change.shape]  # in [0, 1]
    kx, ky, kz = torch.meshgrid(*freqs, indexing="ij")
    perp = torch.sqrt(kx**2 + ky**2) / np.sqrt(2.0)
    iz = torch.clamp((kz * last_bins).long(), max=last_bins - 1)
    ip = torch.clamp((perp * perp_bins).long(), max=perp_bins - 1)
    energy = torch.zeros(last_bins * perp_bins, dtype=torch.float64).index_add_(
        0, (iz * perp_bins + ip).flatten(), power.flatten()
    )
    return np.log(energy.numpy() + 1e-12)


def _cross_validated(feats: dict[float, list[np.ndarray]], y: np.ndarray, label: str) -> None:
    """Print the 5-fold out-of-fold fit of the true score on each grid's features."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = KFold(5, shuffle=True, random_state=0)
    models = {
        "ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
        "random forest": RandomForestRegressor(n_estimators=300, random_state=0, n_jobs=2),
    }
    for g, rows in feats.items():
        x = np.asarray(rows)
        for name, model in models.items():
            pred = cross_val_predict(model, x, y, cv=folds)
            print(
                f"{g:g} mm, {label}, {name}: out-of-fold R² {r2_score(y, pred):.3f}, Spearman "
                f"{spearmanr(pred, y).statistic:.3f}, MAE {np.abs(pred - y).mean():.3f} mm, "
                f"n {len(y)}"
            )


def _change_ceiling(path, n, grids, features, seeds: tuple[int, int], label: str) -> None:
    """Corrupt a head ``n`` times; fit the true score on ``features`` of each grid's change."""
    image = load_native(path)
    clean = {g: preprocess(image, g, GRIDS[g]).data[0].double() for g in grids}
    rng = np.random.default_rng(seeds[0])
    truth, feats = [], {g: [] for g in grids}
    for i in range(n):
        moved, p = corrupt_with_torchio(image, float(rng.uniform(0.1, 4.0)), seeds[1] + i)
        truth.append(p["score"])
        for g in grids:
            feats[g].append(features(preprocess(moved, g, GRIDS[g]).data[0].double() - clean[g]))
    _cross_validated(feats, np.asarray(truth), label)


def segment_ceiling(path: str, n: int) -> None:
    """Print how well the change's profile along the segment axis predicts the true score."""
    _change_ceiling(path, n, tuple(GRIDS), segment_profile, (5, 7000), "segment-axis profile")


def pose_of_each_plane(times: np.ndarray, planes: int) -> np.ndarray:
    """Which pose of ``[I, T1, …, Tn]`` fills each k-space plane along the last axis in ``Motion``.

    TorchIO 1.x swaps the motion-free spectrum into the segment that holds the k-space centre
    (``Motion.sort_spectra``), then fills the planes ``[int(K t_(i-1)), int(K t_i))`` of the
    shifted spectrum with segment ``i``.

    Args:
        times: The motion's ``n`` times in (0, 1).
        planes: Planes along the last axis (``K``).

    Returns:
        ``(K,)`` pose indices.
    """
    times = np.asarray(times, dtype=np.float64)
    order = list(range(len(times) + 1))
    later = np.where(times > 0.5)[0]
    centre = int(later.min()) if later.size else len(order) - 1
    order[0], order[centre] = order[centre], order[0]
    bounds = [0, *(planes * times).astype(int).tolist(), planes]
    out = np.empty(planes, dtype=int)
    for pose, lo, hi in zip(order, bounds[:-1], bounds[1:], strict=True):
        out[lo:hi] = pose
    return out


def displacement_ceiling(path: str, n: int = 3000) -> None:
    """Print how well the displacement the image records (k-space weighted) explains the score."""
    from sklearn.model_selection import KFold

    from motionqc.physics.motion import rigid_matrices
    from motionqc.physics.score import rms_deviation, volume_center
    from motionqc.synthetic.parameters import sample_scored_motion

    image = load_native(path)
    affine, shape = image.affine, image.shape[1:]
    power = torch.fft.fftshift(torch.fft.fftn(image.data[0].double())).abs() ** 2
    freqs = [torch.fft.fftshift(torch.fft.fftfreq(k)).double() for k in power.shape]
    kx, ky, kz = torch.meshgrid(*freqs, indexing="ij")
    gradient = power * (kx**2 + ky**2 + kz**2)
    weights = {"energy": power, "gradient energy": gradient}
    for mm in (2.0, 4.0):  # what an ideal low-pass to a coarser grid keeps (cycles/mm < 1/(2 mm))
        band = (kx.abs() < 0.5 / mm) & (ky.abs() < 0.5 / mm) & (kz.abs() < 0.5 / mm)
        weights[f"{mm:g} mm band's gradient energy"] = gradient * band
    profiles = {k: (w.sum(dim=(0, 1)) / w.sum()).numpy() for k, w in weights.items()}
    center = volume_center(affine, shape)
    rng = np.random.default_rng(6)
    truth, feats = [], {f"{k}-weighted displacement": [] for k in weights}
    feats["mean displacement of the poses"] = []
    for i in range(n):
        p = sample_scored_motion(float(rng.uniform(0.1, 4.0)), 9000 + i, affine=affine, shape=shape)
        poses = rigid_matrices(p["degrees"], p["translation"])
        rms = np.array([rms_deviation(m, None, 80.0, center) for m in poses])
        planes = pose_of_each_plane(p["times"], len(profiles["energy"]))
        truth.append(p["score"])
        for k, prof in profiles.items():
            feats[f"{k}-weighted displacement"].append(np.sqrt((prof * rms[planes] ** 2).sum()))
        feats["mean displacement of the poses"].append(rms[1:].mean())
    y = np.asarray(truth)
    for name, values in feats.items():
        x, pred = np.asarray(values), np.zeros_like(y)
        for fit, held in KFold(5, shuffle=True, random_state=0).split(x):
            iso = IsotonicRegression(out_of_bounds="clip").fit(x[fit], y[fit])
            pred[held] = iso.predict(x[held])
        r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        print(
            f"{name}: out-of-fold isotonic R² {r2:.3f}, Spearman {spearmanr(x, y).statistic:.3f}, "
            f"MAE {np.abs(pred - y).mean():.3f} mm, n {n}"
        )


def spectrum_ceiling(path: str, n: int) -> None:
    """Print how well the change's spectrum (the clean image known) predicts the true score."""
    _change_ceiling(path, n, (1.0, 4.0), spectrum_features, (4, 5000), "spectrum shells")


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
    parser.add_argument("--n", type=int, default=120, help="corrupted volumes of parts 4 and 5")
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
    if 4 in parts:
        print("4. the change's spectrum (clean Colin27 known) against the true score:")
        spectrum_ceiling(files["colin27"], args.n)
    if 5 in parts:
        print(
            "5. the change's profile along the segment axis (clean Colin27 known) against the score:"
        )
        segment_ceiling(files["colin27"], args.n)
    if 6 in parts:
        print("6. the displacement the image records (k-space weighted) against the score:")
        displacement_ceiling(files["colin27"])


if __name__ == "__main__":
    main()
