"""Pretraining data for the sample profile: augmented heads, splits by head, a rendered synthetic set.

The paper pretrains on 462 real heads × 300 motion samples on GPUs. The sample profile has three
real heads and a 2-core CPU, so it (1) multiplies the heads into *pseudo-subjects* with seeded
spatial augmentations (affine + elastic: new head shapes, same tissue contrast), (2) splits by
real head so the test split is anatomy the network never saw, and (3) renders the synthetic samples
once (motion + the authors' augmentations, in worker processes) into an in-memory tensor, so the
training epochs spend every CPU cycle on SFCN rather than on re-simulating motion.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset

from motionqc.synthetic import SyntheticMotionDataset

__all__ = [
    "RenderedSet",
    "augment_heads",
    "head_of",
    "head_splits",
    "render_synthetic",
]

_SEP = "~"  # pseudo-subject id = "<real head>~<k>"


def head_of(source: str) -> str:
    """Return the real head a pseudo-subject id (``"colin27~3"``) was made from."""
    return source.split(_SEP, 1)[0]


def augment_heads(
    heads: Mapping[str, tio.ScalarImage],
    n: int,
    seed: int = 0,
    *,
    keep_original: bool = True,
    scales: float = 0.1,
    degrees: float = 8.0,
    translation: float = 4.0,
    max_displacement: float = 6.0,
) -> dict[str, tio.ScalarImage]:
    """Draw seeded pseudo-subjects from each real head (random affine + elastic deformation).

    Args:
        heads: Real head id → preprocessed image (one channel).
        n: Pseudo-subjects per head (including the unmodified head when ``keep_original``).
        seed: Base seed; each (head, k) has its own derived seed.
        keep_original: Make ``k = 0`` the head itself.
        scales: Isotropic scaling range ±``scales`` (torchio ``RandomAffine``).
        degrees: Rotation range ±``degrees`` per axis.
        translation: Translation range ±mm per axis.
        max_displacement: Elastic deformation's maximal displacement (mm).

    Returns:
        ``"<head>~<k>"`` → image, in head then k order.

    Raises:
        ValueError: If ``n`` is below 1 or a head id contains ``"~"``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out: dict[str, tio.ScalarImage] = {}
    for h_idx, (vid, image) in enumerate(heads.items()):
        if _SEP in vid:
            raise ValueError(f"head id {vid!r} must not contain {_SEP!r}")
        for k in range(n):
            if k == 0 and keep_original:
                out[f"{vid}{_SEP}{k}"] = image
                continue
            transform = tio.Compose(
                [
                    tio.RandomAffine(
                        scales=scales,
                        degrees=degrees,
                        translation=translation,
                        default_pad_value="minimum",
                    ),
                    tio.RandomElasticDeformation(
                        num_control_points=7, max_displacement=max_displacement
                    ),
                ]
            )
            state = np.random.SeedSequence([int(seed), h_idx, k]).generate_state(1)[0]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(state))
                new = transform(image)
            out[f"{vid}{_SEP}{k}"] = tio.ScalarImage(tensor=new.data.clone(), affine=image.affine)
    return out


def head_splits(
    sources: Iterable[str], test_heads: Sequence[str], val_per_head: int = 1
) -> dict[str, str]:
    """Split pseudo-subjects by real head: unseen anatomy for testing.

    Every pseudo-subject of a head in ``test_heads`` goes to ``test``; of the other heads, the
    last ``val_per_head`` pseudo-subjects of each go to ``val`` and the rest to ``train``.

    Args:
        sources: Pseudo-subject ids (``"<head>~<k>"``).
        test_heads: Real heads kept for testing.
        val_per_head: Pseudo-subjects per training head held out for validation.

    Returns:
        Source id → ``train`` / ``val`` / ``test``.

    Raises:
        ValueError: If no head is left for training, or a test head is unknown.
    """
    ids = list(sources)
    by_head: dict[str, list[str]] = {}
    for s in ids:
        by_head.setdefault(head_of(s), []).append(s)
    unknown = sorted(set(test_heads) - set(by_head))
    if unknown:
        raise ValueError(f"test head(s) not among the sources: {', '.join(unknown)}")
    if not set(by_head) - set(test_heads):
        raise ValueError("every head is a test head: none left for training")
    out = {}
    for head, members in by_head.items():
        members = sorted(members, key=lambda s: int(s.split(_SEP, 1)[1]) if _SEP in s else 0)
        for i, s in enumerate(members):
            if head in test_heads:
                out[s] = "test"
            elif i >= len(members) - val_per_head and len(members) > val_per_head:
                out[s] = "val"
            else:
                out[s] = "train"
    return out


class RenderedSet(Dataset):
    """Rendered synthetic samples held in memory (float16), served as ``(image, label)``.

    Attributes:
        images: ``(N, 1, X, Y, Z)`` float16 tensor.
        labels: ``(N,)`` float32 labels (mm).
        table: The parameter rows the samples came from (same order).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, table: pd.DataFrame) -> None:
        if len(images) != len(labels) or len(images) != len(table):
            raise ValueError("images, labels and table must have the same length")
        self.images, self.labels, self.table = images, labels, table.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image float32 (1, X, Y, Z), label)``."""
        return self.images[i].float(), self.labels[i]


def _table_key(table: pd.DataFrame, volumes: Mapping[str, tio.ScalarImage], augment: bool) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(table, index=False).values.tobytes())
    for vid in sorted(set(table["source"])):
        h.update(vid.encode())
        h.update(volumes[vid].data.numpy().tobytes())
    h.update(json.dumps({"augment": augment}).encode())
    return h.hexdigest()[:16]


def _collate(batch: list[dict[str, object]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([b["image"] for b in batch]).half()  # type: ignore[misc]
    labels = torch.tensor([b["label"] for b in batch], dtype=torch.float32)
    return images, labels


def render_synthetic(
    table: pd.DataFrame,
    volumes: Mapping[str, tio.ScalarImage],
    split: str,
    *,
    augment: bool = True,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RenderedSet:
    """Materialise one split of a synthetic parameter table (motion + augmentations) in memory.

    Each sample is exactly ``SyntheticMotionDataset(table, volumes, split)[i]``; rendering runs
    in ``num_workers`` processes (one torch thread each). With ``cache_dir`` the result is stored
    as ``synthetic_<split>_<key>.pt`` keyed by the table, the source voxels and the options, and
    re-used by a later run.

    Args:
        table: Parameter table (:func:`motionqc.synthetic.build_parameter_table`).
        volumes: Source id → preprocessed image.
        split: ``train``, ``val`` or ``test``.
        augment: Apply the authors' extra augmentations.
        num_workers: Rendering processes.
        cache_dir: Folder of the cache (``None``: no cache).
        progress: Show a progress bar.

    Returns:
        The :class:`RenderedSet`.
    """
    from tqdm.auto import tqdm

    dataset = SyntheticMotionDataset(table, volumes, split=split, augment=augment)
    rows = dataset.table
    cache = None
    if cache_dir is not None:
        used = {s: volumes[s] for s in set(rows["source"])}
        cache = Path(cache_dir) / f"synthetic_{split}_{_table_key(rows, used, augment)}.pt"
        if cache.is_file():
            state = torch.load(cache, map_location="cpu", weights_only=True)
            return RenderedSet(state["images"], state["labels"], rows)
    loader = DataLoader(
        dataset,
        batch_size=8,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=lambda _: torch.set_num_threads(1),
        persistent_workers=False,
    )
    images, labels = [], []
    for x, y in tqdm(loader, desc=f"render {split}", disable=not progress, leave=False):
        images.append(x)
        labels.append(y)
    out = RenderedSet(torch.cat(images), torch.cat(labels), rows)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"images": out.images, "labels": out.labels}, tmp)
        tmp.replace(cache)
    return out
