"""The recipe's per-step augmentation: geometry and intensities drawn anew for every batch.

Each pool sample is zoomed (×0.83–1.2, its label with it), rotated (±10°) and shifted (±10 mm) in
its field of view (:func:`geometry_batch`: two training heads alone teach one head size, and a
larger head that fills the field of view was read as motion), then gets a left-right flip and a
fresh intensity draw — gamma, a random monotone contrast curve (the "contrast shift" that let the
follow-up work's synthetic-only model transfer to real scans), a polynomial bias field, Rician
noise — and the percentile scaling of inference (:func:`motionqc.models.encoder.scale_input`)
(:func:`augment_batch`), so the network cannot key on one head's intensity profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from motionqc.data.detail import zoom_offset
from motionqc.models.encoder import scale_input
from motionqc.synthetic.heads import bias_field

__all__ = [
    "affine_of_uniforms",
    "augment_batch",
    "crop_batch",
    "gaussian_blur",
    "geometry_batch",
    "resample_affine",
]


def _monotone_curve(v: torch.Tensor, knots: int, gen: torch.Generator) -> torch.Tensor:
    """A random increasing piecewise-linear map of [0, 1] onto itself (identity outside)."""
    xs = torch.sort(torch.rand(knots, generator=gen, dtype=torch.float64)).values
    ys = torch.sort(torch.rand(knots, generator=gen, dtype=torch.float64)).values
    xs = torch.cat([torch.zeros(1, dtype=xs.dtype), xs, torch.ones(1, dtype=xs.dtype)]).float()
    ys = torch.cat([torch.zeros(1, dtype=ys.dtype), ys, torch.ones(1, dtype=ys.dtype)]).float()
    inside = v.clamp(0.0, 1.0)
    seg = torch.bucketize(inside.contiguous(), xs[1:-1])
    x0, x1, y0, y1 = xs[seg], xs[seg + 1], ys[seg], ys[seg + 1]
    mapped = y0 + (inside - x0) / (x1 - x0).clamp_min(1e-6) * (y1 - y0)
    return torch.where((v >= 0) & (v <= 1), mapped, v)


def _smooth_field(shape: Sequence[int], coefficients: torch.Tensor) -> torch.Tensor:
    """TorchIO's polynomial bias field on a grid 4× coarser, trilinearly upsampled (it is smooth)."""
    coarse = [max(2, int(s) // 4) for s in shape]
    field = bias_field(coarse, coefficients)[None, None]
    return torch.nn.functional.interpolate(field, size=tuple(shape), mode="trilinear")[0, 0]


def gaussian_blur(v: torch.Tensor, sigma_vox: float | Sequence[float]) -> torch.Tensor:
    """Gaussian blur of one volume (separable, edges replicated).

    Args:
        v: ``(X, Y, Z)`` volume.
        sigma_vox: Standard deviation in voxels: one for every axis (isotropic), or one per
            axis (an axis at 0 is left alone).

    Returns:
        The blurred volume.
    """
    sigmas = [float(sigma_vox)] * 3 if isinstance(sigma_vox, int | float) else list(sigma_vox)
    if len(sigmas) != 3:
        raise ValueError(f"sigma_vox must be one value or three, got {sigma_vox!r}")
    out = v[None, None]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        radius = max(1, int(3 * sigma + 0.5))  # scipy.ndimage.gaussian_filter(truncate=3)
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = torch.nn.functional.conv3d(
            torch.nn.functional.pad(out, pad, mode="replicate"), k.view(shape)
        )
    return out[0, 0]  # v itself (a view) when every sigma is 0


def resample_affine(
    v: torch.Tensor,
    zoom: float,
    angles_deg: Sequence[float],
    shift_mm: Sequence[float],
    spacing_mm: float,
) -> torch.Tensor:
    """Zoom, rotate and shift volumes about the centre of their grid (trilinear, zeros outside).

    The output at the point ``q`` (mm from the grid centre) is the input at
    ``Rᵀ (q − shift) / zoom``, with ``R`` the rotations about X, then Y, then Z: the head appears
    ``zoom`` times larger, rotated by ``R`` and moved by ``shift``.

    Args:
        v: ``(B, C, X, Y, Z)`` volumes on an isotropic grid.
        zoom: Magnification (> 0).
        angles_deg: Rotation about X, Y, Z (degrees).
        shift_mm: Shift along X, Y, Z (mm).
        spacing_mm: The voxel size.

    Returns:
        The resampled volumes (float32).
    """
    rot = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles_deg):
        a = math.radians(float(angle))
        i, j = (axis + 1) % 3, (axis + 2) % 3  # right-handed: X→(Y, Z), Y→(Z, X), Z→(X, Y)
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        rot = r @ rot
    half = torch.tensor(v.shape[2:], dtype=torch.float64) * spacing_mm / 2
    lin = rot.T / float(zoom)
    m = torch.diag(1 / half) @ lin @ torch.diag(half)  # in affine_grid's [-1, 1] coordinates
    t = -(lin @ torch.tensor([float(s) for s in shift_mm], dtype=torch.float64)) / half
    order = [2, 1, 0]  # affine_grid orders its coordinates (W, H, D) = (Z, Y, X)
    theta = torch.cat([m[order][:, order], t[order, None]], dim=1).float()
    grid = torch.nn.functional.affine_grid(
        theta.expand(len(v), 3, 4), list(v.shape), align_corners=False
    )
    return torch.nn.functional.grid_sample(
        v.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def affine_of_uniforms(
    u: Sequence[float], knobs: Mapping[str, float]
) -> tuple[float, list[float], list[float]]:
    """The zoom, rotations and shift that seven uniforms in (−1, 1) stand for.

    ``s = exp(u[0]·log(1 + zoom))``, the rotation about X, Y, Z ``u[1:4]·rotate_deg`` (degrees) and
    the shift ``u[4:7]·shift_mm`` (mm): the arguments of :func:`resample_affine`.
    """
    zoom = math.exp(float(u[0]) * math.log1p(float(knobs["zoom"])))
    angles = [float(a) * float(knobs["rotate_deg"]) for a in u[1:4]]
    shift = [float(d) * float(knobs["shift_mm"]) for d in u[4:7]]
    return zoom, angles, shift


def geometry_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    augment: Mapping[str, float],
    spacing_mm: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom, rotate and shift each pool sample in its field of view; scale its label with the zoom.

    Per volume, with probability ``p_geometry``: a zoom ``s = exp(u·log(1 + zoom))`` (u ~ U(±1)),
    a rotation about each axis ~ U(±``rotate_deg``) and a shift ~ U(±``shift_mm``) per axis
    (:func:`resample_affine`). The training heads then fill (and overflow) the field of view as
    a large or off-centre head does, which the two training heads' sizes alone do not teach. A
    head zoomed by ``s`` that moved by the sampled poses is, in mm, a head ``s`` times larger whose
    every displacement is ``s`` times larger, so its label — an RMS displacement in mm — is ``s``
    times the sample's.

    Channels after the first (:mod:`motionqc.data.detail`) move with the head and get
    :func:`motionqc.data.detail.zoom_offset` of the zoom.

    Args:
        x: ``(B, C, X, Y, Z)`` batch on an isotropic grid.
        y: ``(B,)`` labels (mm).
        gen: The generator of every draw.
        augment: ``p_geometry``, ``zoom``, ``rotate_deg``, ``shift_mm``
            (:attr:`motionqc.training.recipe.RecipeConfig.augment`; absent or ``p_geometry = 0``: unchanged, no draw).
        spacing_mm: The voxel size of ``x``.

    Returns:
        The batch (float32) and its labels.
    """
    p = float(augment.get("p_geometry", 0.0))
    if p <= 0:
        return x, y
    out, labels = [], []
    for v, label in zip(x.float(), y.float(), strict=True):
        u = (torch.rand(8, generator=gen, dtype=torch.float64) * 2 - 1).tolist()
        if (u[7] + 1) / 2 >= p:
            out.append(v)
            labels.append(label)
            continue
        zoom, angles, shift = affine_of_uniforms(u, augment)
        moved = resample_affine(v[None], zoom, angles, shift, spacing_mm)[0]
        if len(moved) > 1:  # detail channels: the zoomed head's finer differences
            moved[1:] += zoom_offset(zoom)
        out.append(moved)
        labels.append(label * zoom)
    return torch.stack(out), torch.stack(labels)


def augment_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    augment: Mapping[str, float],
    method: str = "percentile",
    spacing_mm: float = 1.0,
) -> torch.Tensor:
    """Draw new intensities for a batch of pool samples, then scale it as inference does.

    Per volume: left-right flip; a Gaussian blur (σ ~ U(0, ``blur_mm``) mm) or an unsharp mask
    (``v + a·(v − blur_σ=1 voxel(v))``, a ~ U(0, ``sharpen``)), so that sharpness alone is not
    read as motion (both act on k-space as a multiplication, so they commute with the k-space
    motion model); with probability ``p_blur_axes`` a blur with its own σ ~ U(0, ``blur_mm``)
    per axis, the resolution of an acquisition that is coarser along some axes (a blur after
    the motion is a lower resolution of the corrupted acquisition); gamma ``sign(v)·|v|^γ``
    (log γ ~ U(±``log_gamma``)) on the volume
    scaled by its 99.5th percentile, a random monotone contrast curve blended with the identity
    (weight ~ U(0, ``contrast_strength``): the faint ghosts in the background stay visible), a
    polynomial bias field
    (TorchIO's ``RandomBiasField``: order 3, coefficients ~ U(±``bias_coefficient``)), Rician noise
    (σ ~ U(0, ``noise_std``) of that percentile), each with its probability; then
    :func:`motionqc.models.encoder.scale_input`.

    Channels after the first (:mod:`motionqc.data.detail`) are flipped with it and otherwise
    left as they are (they are local ratios, already scaled).

    Args:
        x: ``(B, C, X, Y, Z)`` batch.
        gen: The generator of every draw (seeded per step by :func:`motionqc.training.recipe.train`).
        augment: Probabilities and ranges (:attr:`motionqc.training.recipe.RecipeConfig.augment`).
        method: The input scaling the encoder records.
        spacing_mm: The voxel size of ``x`` (the blur is drawn in mm).

    Returns:
        The augmented, scaled batch (float32).
    """
    out, rest = [], []
    shape = tuple(x.shape[2:])
    for v, extra in zip(x[:, 0].float(), x[:, 1:].float(), strict=True):

        def draw() -> float:
            return float(torch.rand((), generator=gen))

        if draw() < augment["p_flip"]:
            v, extra = v.flip(0), extra.flip(1)
        rest.append(extra)
        p_blur, p_sharpen = augment.get("p_blur", 0.0), augment.get("p_sharpen", 0.0)
        if p_blur > 0 or p_sharpen > 0:  # off: the draws of a recipe without them are unchanged
            if draw() < p_blur:
                v = gaussian_blur(v, draw() * augment["blur_mm"] / spacing_mm)
            elif draw() < p_sharpen:
                v = v + draw() * augment["sharpen"] * (v - gaussian_blur(v, 1.0))
        p_axes = augment.get("p_blur_axes", 0.0)
        if p_axes > 0 and draw() < p_axes:  # off: no draw, as before the knob existed
            v = gaussian_blur(v, [draw() * augment["blur_mm"] / spacing_mm for _ in range(3)])
        top = torch.quantile(v.flatten()[::7], 0.995).clamp_min(1e-6)
        v = v / top
        log_gamma = (2 * draw() - 1) * augment["log_gamma"]
        v = v.sign() * v.abs() ** math.exp(log_gamma)
        if draw() < augment["p_contrast"]:  # a random curve, blended with the identity
            alpha = draw() * augment["contrast_strength"]
            v = v + alpha * (_monotone_curve(v, int(augment["contrast_knots"]), gen) - v)
        if draw() < augment["p_bias"]:
            c = augment["bias_coefficient"]
            coef = (2 * torch.rand(20, generator=gen, dtype=torch.float64) - 1) * c
            v = v * _smooth_field(shape, coef)
        if draw() < augment["p_noise"]:
            sigma = draw() * augment["noise_std"]
            n1 = torch.randn(v.shape, generator=gen) * sigma
            n2 = torch.randn(v.shape, generator=gen) * sigma
            v = torch.sqrt((v + n1) ** 2 + n2**2)
        out.append(v)
    return torch.cat([scale_input(torch.stack(out)[:, None], method), torch.stack(rest)], dim=1)


def crop_batch(x: torch.Tensor, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """One crop of ``shape`` per volume, its corner drawn uniformly from ``gen``.

    The encoder is fully convolutional (its head averages the whole final feature map), so a
    network trained on crops scores the whole grid at inference; each crop shows the artefact
    at the grid's resolution for a fraction of the compute, and no crop shows the whole head.

    Args:
        x: ``(B, C, X, Y, Z)`` batch.
        shape: Crop size per axis (at most the batch's).
        gen: The generator of the corners (three integers per volume).

    Returns:
        ``(B, C, *shape)``.

    Raises:
        ValueError: If the crop is larger than the grid along an axis.
    """
    grid = tuple(int(s) for s in x.shape[2:])
    size = tuple(int(s) for s in shape)
    if len(size) != 3 or any(c > g for c, g in zip(size, grid, strict=True)):
        raise ValueError(f"crop {size} does not fit in the grid {grid}")
    out = []
    for v in x:
        corner = [
            int(torch.randint(g - c + 1, (), generator=gen))
            for c, g in zip(size, grid, strict=True)
        ]
        out.append(
            v[
                :,
                corner[0] : corner[0] + size[0],
                corner[1] : corner[1] + size[1],
                corner[2] : corner[2] + size[2],
            ]
        )
    return torch.stack(out)
