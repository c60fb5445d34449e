"""Heads generated from label maps: one intensity per structure, a dark background, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchio as tio
from conftest import write_nifti

from motionqc.synthetic.label_heads import generated_heads


def _label_map(path: Path) -> Path:
    """Nested shells labelled with FreeSurfer-like, non-consecutive values (0 outside)."""
    shape = (20, 24, 20)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    labels = np.zeros(shape, dtype=np.int16)
    for radius, value in ((0.9, 530), (0.75, 507), (0.6, 3), (0.4, 41), (0.2, 17)):
        labels[r < radius] = value
    return write_nifti(path, labels, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_each_structure_gets_one_intensity_and_the_background_stays_dark(tmp_path: Path) -> None:
    path = _label_map(tmp_path / "seg.nii.gz")
    heads = generated_heads(
        {"m": path}, 3, spacing_mm=2.0, shape=(20, 24, 20), std=(0.0, 0.0), blur_mm=(0.0, 0.0)
    )
    assert list(heads) == ["m.g0", "m.g1", "m.g2"]
    labels = tio.LabelMap(path).data[0].numpy()
    for image in heads.values():
        data = image.data[0].numpy()
        assert data.shape == labels.shape and abs(float(data.mean()) - 1) < 1e-5
        levels = {}
        for value in np.unique(labels):
            inside = data[labels == value]
            assert np.ptp(inside) < 1e-5, f"label {value} holds several intensities"
            levels[int(value)] = float(inside[0])
        # structures ~ U(0.1, 1), background ~ U(0, 0.03): at most 0.3 of the faintest structure
        assert levels[0] <= 0.3 * min(v for k, v in levels.items() if k) + 1e-6
    contrasts = [tuple(np.unique(h.data.numpy().round(5))) for h in heads.values()]
    assert len(set(contrasts)) == 3  # every head its own contrast


def test_generated_heads_are_fixed_by_the_seed(tmp_path: Path) -> None:
    path = _label_map(tmp_path / "seg.nii.gz")
    kwargs = {"spacing_mm": 2.0, "shape": (16, 16, 16)}
    a = generated_heads({"m": path}, 2, seed=5, **kwargs)
    b = generated_heads({"m": path}, 2, seed=5, **kwargs)
    c = generated_heads({"m": path}, 2, seed=6, **kwargs)
    assert a["m.g1"].shape == (1, 16, 16, 16)
    assert np.array_equal(a["m.g1"].data.numpy(), b["m.g1"].data.numpy())
    assert not np.allclose(a["m.g1"].data.numpy(), c["m.g1"].data.numpy())
    with pytest.raises(ValueError, match="at least 1"):
        generated_heads({"m": path}, 0, **kwargs)
