"""Shared fixtures: tiny NIfTI volumes written on the fly, and the real sample heads."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest


def env_without_allocator_settings() -> dict[str, str]:
    """This environment minus ``motionqc.runtime.allocator``'s variables (``make test`` exports them): for
    a child that must run with glibc's default allocator."""
    from motionqc.runtime.allocator import ALLOCATOR_ENV

    return {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (gzip when the name ends in .gz) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def forged_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A tiny NIfTI whose header claims ``shape`` float32 voxels (the data: a few zeros)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.eye(4), code=1)
    raw = hdr.binaryblock + b"\0" * 4 + b"\0" * 64  # header, extension flag, a few bytes
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def head_phantom(shape: tuple[int, int, int] = (24, 28, 22), seed: int = 0) -> np.ndarray:
    """An ellipsoidal 'head' with a brighter core and mild noise (float32)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    data = np.where(r < 0.9, 100.0, 0.0) + np.where(r < 0.5, 50.0, 0.0)
    return (data + rng.normal(0, 2, shape) * (r < 0.9)).astype(np.float32)


def ellipsoid_head(seed: int = 0, shape=(40, 48, 40), spacing: float = 4.0, offset: float = 0.0):
    """A smooth textured ellipsoid 'head' as a torchio image, centred on the world origin + offset."""
    import torch
    import torchio as tio

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    data = (r < 0.8) * (1.0 + 0.3 * np.sin(6 * grid[0]) * np.cos(5 * grid[1]))
    data = data + 0.05 * rng.random(shape)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2 + offset
    return tio.ScalarImage(tensor=torch.as_tensor(data, dtype=torch.float32)[None], affine=affine)


@pytest.fixture
def phantom_path(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "phantom_T1w.nii.gz", head_phantom())


@pytest.fixture(scope="session")
def sample():
    """The real sample manifest (requires `make data`, which `make test` runs first)."""
    from motionqc.data.volumes import sample_manifest

    return sample_manifest()


@pytest.fixture(scope="session")
def mrart(tmp_path_factory: pytest.TempPathFactory, sample: pd.DataFrame) -> Path:
    """An MR-ART-shaped BIDS tree: 9 subjects x {standard, headmotion1, headmotion2}, real NIfTI.

    Each volume is the first sample head at 4 mm plus noise growing with its rating (1 = good, as
    MR-ART rates), and ``derivatives/scores.tsv`` holds the ratings.
    """
    from motionqc.data.volumes import preprocess

    root = tmp_path_factory.mktemp("ds004173")
    rng = np.random.default_rng(1)
    image = preprocess(sample["path"].iloc[0], 4.0, (40, 48, 40), normalise=False)
    data = image.data[0].numpy()
    lines = ["bids_name\tscore"]
    for i in range(9):
        sub = f"{100 + i:06d}"
        for j, acq in enumerate(["standard", "headmotion1", "headmotion2"]):
            score = min(3, j + 1 + int(rng.integers(0, 2)) * (j > 0) * (i % 2))
            noisy = data + rng.normal(0, score * 0.1 * data.std(), data.shape)
            name = f"sub-{sub}_acq-{acq}_T1w"
            write_nifti(
                root / f"sub-{sub}" / "anat" / f"{name}.nii.gz",
                noisy.astype(np.float32),
                image.affine,
            )
            lines.append(f"{name}\t{score}")
    (root / "derivatives").mkdir()
    (root / "derivatives" / "scores.tsv").write_text("\n".join(lines) + "\n")
    return root


class CodePayload:
    """An object whose unpickling opens ``marker`` for writing: proof that a loader ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random SFCN saved as an encoder file (4 mm, 40×48×40): the CLI's plumbing.

    Test modules that need another grid or note define their own ``encoder``, which wins.
    """
    import torch

    from motionqc.models.encoder import save_encoder
    from motionqc.models.sfcn import SFCN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    return save_encoder(
        path, SFCN(), info={"note": "random init"}, spacing_mm=4.0, shape=(40, 48, 40)
    )
