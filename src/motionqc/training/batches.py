"""Batches of any layout: unpacking, moving to a device, concatenating, reordering.

A batch is a tensor, a tuple/list or a dict of them (or of lists); the trainer moves it to its
device (:func:`to_device`), gathers validation outputs in dataset order (:class:`IndexedDataset`,
:func:`cat_batches`, :func:`index_batch`) and splits it into input and target
(:func:`default_unpack`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["IndexedDataset", "cat_batches", "default_unpack", "index_batch", "to_device"]


def default_unpack(batch: Any) -> tuple[Any, Any]:
    """``(input, target)`` of a batch that is a pair or a dict with ``input`` and ``target``."""
    if isinstance(batch, dict):
        return batch["input"], batch["target"]
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        "a batch must be (input, target) or a dict with 'input' and 'target'; pass unpack= to "
        "the Trainer for other layouts"
    )


def to_device(obj: Any, device: torch.device) -> Any:
    """The batch with every tensor in it moved to ``device`` (non-blocking)."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def cat_batches(items: list[Any]) -> Any:
    """Batches of one layout concatenated along the first axis (lists are chained)."""
    first = items[0]
    if torch.is_tensor(first):
        return torch.cat(items)
    if isinstance(first, list | tuple):
        return type(first)(cat_batches([it[i] for it in items]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: cat_batches([it[k] for it in items]) for k in first}
    return [x for it in items for x in it]


def index_batch(obj: Any, order: torch.Tensor) -> Any:
    """The batch's items in the order ``order`` (every tensor and list in it reordered)."""
    if torch.is_tensor(obj):
        return obj[order]
    if (
        isinstance(obj, tuple | list)
        and obj
        and (torch.is_tensor(obj[0]) or isinstance(obj[0], dict))
    ):
        return type(obj)(index_batch(o, order) for o in obj)
    if isinstance(obj, dict):
        return {k: index_batch(v, order) for k, v in obj.items()}
    return [obj[i] for i in order.tolist()]


class IndexedDataset(Dataset):
    """Wrap a dataset so each item also carries its index (for gathering in dataset order)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]
