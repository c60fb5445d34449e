"""A new in-head texture for a source volume, drawn before its motion.

An encoder given the simulation grid's fine detail (:mod:`motionqc.data.detail`) fits its
training heads' held-out pseudo-subjects far better than one given the encoder grid alone, but
it read the pattern of an unseen head's own in-head detail as heavy motion
(``benchmarks/detail_swap.py``): with two training heads it cannot tell anatomy's fine texture
from the artefact. In the spirit of SynthSeg's domain randomisation (Billot et al. 2023), which
renders its training images from tissue layouts with random intensities and noise,
:func:`synthetic_texture` keeps a source's tissue layout and edges and replaces its fine texture
by a random one: a Gaussian blur takes the head's own texture away, then a smooth Gaussian
random field of random correlation length and amplitude multiplies the tissue. Each sample then
shows a texture no head owns, so no head's own pattern can stand for a level of motion.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from motionqc.synthetic.augment import gaussian_blur

__all__ = ["IN_HEAD", "synthetic_texture"]

IN_HEAD = 0.2
"""The blurred source's intensity (the sources have mean 1) above which a voxel is textured."""


def synthetic_texture(
    data: torch.Tensor, rng: np.random.Generator, knobs: Mapping[str, float], spacing_mm: float
) -> torch.Tensor:
    """Replace a source's fine in-head texture by a random one (with probability ``p_texture``).

    With probability ``p_texture``: the source is blurred with σ ~ U(½, 1) × ``texture_smooth_mm``;
    a field of independent standard normal voxels is blurred with σ ~ U(0, ``texture_mm``) and
    scaled to unit standard deviation; the result is ``s · (1 + a · f · w)`` clipped at 0, where
    ``s`` is the blurred source, ``f`` the field, ``a`` ~ U(0, ``texture_amp``) and
    ``w = clamp(s / IN_HEAD − 1, 0, 1)`` a weight that is 0 in the background and 1 inside the
    head (the background keeps its blurred floor; :func:`motionqc.synthetic.pool.acquisition_noise`
    draws a noise floor after the motion).

    Four uniforms and one seed are drawn from ``rng`` whatever the outcome when ``p_texture`` > 0,
    none otherwise (``data`` is then returned unchanged).

    Args:
        data: One volume ``(X, Y, Z)`` at the simulation grid, intensities of mean about 1.
        rng: The pool sample's generator.
        knobs: :attr:`motionqc.training.recipe.RecipeConfig.source_augment` (``p_texture``,
            ``texture_smooth_mm``, ``texture_mm``, ``texture_amp``).
        spacing_mm: The voxel size of ``data``.

    Returns:
        The retextured volume (float32), or ``data``.
    """
    p_texture = float(knobs.get("p_texture", 0.0))
    if p_texture <= 0:
        return data
    u = rng.uniform(size=4)
    seed = int(rng.integers(2**62))
    if u[0] >= p_texture:
        return data
    smooth_vox = (0.5 + 0.5 * float(u[1])) * float(knobs["texture_smooth_mm"]) / spacing_mm
    s = gaussian_blur(data.float(), smooth_vox)
    gen = torch.Generator().manual_seed(seed)
    field = gaussian_blur(
        torch.randn(data.shape, generator=gen),
        float(u[2]) * float(knobs["texture_mm"]) / spacing_mm,
    )
    field = field / field.std().clamp_min(1e-6)
    weight = (s / IN_HEAD - 1.0).clamp(0.0, 1.0)
    amp = float(u[3]) * float(knobs["texture_amp"])
    return (s * (1.0 + amp * field * weight)).clamp_min(0.0)
