"""Profiles: one mechanism that sets every size knob of the pipeline.

- ``smoke``: CI; tiny grids and counts, seconds per notebook.
- ``sample`` (default): the real sample volumes on a 2-core CPU, minutes.
- ``paper``: the poster's scale (1 mm, 160×192×160) on GPUs with a user's own manifest.

The active profile is named by the ``MOTIONQC_PROFILE`` environment variable. Each notebook's
``parameters`` cell reads its defaults from :func:`get_profile`, and papermill can override any
single value (``-p name value`` or ``-f notebooks/params/<file>.yaml``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

__all__ = ["Profile", "PROFILES", "get_profile", "DEFAULT_PROFILE"]

DEFAULT_PROFILE = "sample"


@dataclass(frozen=True)
class Profile:
    """Size knobs shared by every stage.

    Attributes:
        name: Profile name.
        spacing_mm: Isotropic voxel size the volumes are resampled to.
        shape: Grid (X, Y, Z) the volumes are cropped/padded to after resampling.
        n_augmented_heads: Seeded torchio augmentations drawn per real sample head.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: Batch size for training and inference.
        num_workers: DataLoader worker processes.
        encoder_spacing_mm: Voxel size the motion encoder (SFCN) is trained and run at.
        encoder_shape: Input grid of the encoder. The sample profile trains at 4 mm on a 2-core
            CPU (notebook 03 explains why); ``paper`` is the authors' 1 mm 160×192×160.
        manifest: Path of the user's manifest (``paper``); ``None`` uses the sample set.
        seed: Base seed of every random draw.
    """

    name: str
    spacing_mm: float
    shape: tuple[int, int, int]
    n_augmented_heads: int
    device: str
    batch_size: int
    num_workers: int
    encoder_spacing_mm: float = 4.0
    encoder_shape: tuple[int, int, int] = (40, 48, 40)
    manifest: str | None = None
    seed: int = 0

    def replace(self, **changes: object) -> Profile:
        """Return a copy with some knobs changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        """Return the knobs as a plain dict (for logs and papermill YAML)."""
        return dataclasses.asdict(self)


# fmt: off
_SMOKE = Profile(
    name="smoke", spacing_mm=4.0, shape=(40, 48, 40), n_augmented_heads=2, device="cpu",
    batch_size=4, num_workers=0,
)

PROFILES: dict[str, Profile] = {
    "smoke": _SMOKE,
    "sample": _SMOKE.replace(
        name="sample", spacing_mm=2.0, shape=(80, 96, 80), n_augmented_heads=8, batch_size=8,
        num_workers=2,
    ),
    "paper": _SMOKE.replace(
        name="paper", spacing_mm=1.0, shape=(160, 192, 160), n_augmented_heads=0, device="cuda",
        batch_size=16, num_workers=8, encoder_spacing_mm=1.0, encoder_shape=(160, 192, 160),
    ),
}
# fmt: on


def get_profile(name: str | None = None) -> Profile:
    """Return a profile by name, or the one named by ``MOTIONQC_PROFILE`` (default ``sample``).

    Args:
        name: Profile name; ``None`` reads ``MOTIONQC_PROFILE``.

    Returns:
        The profile.

    Raises:
        ValueError: If the name is not a known profile.
    """
    key = (name or os.environ.get("MOTIONQC_PROFILE") or DEFAULT_PROFILE).strip().lower()
    if key not in PROFILES:
        raise ValueError(f"unknown profile {key!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[key]
