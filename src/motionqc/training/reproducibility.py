"""Reproducible training: seeds, RNG states for resumable checkpoints, Kaiming initialisation.

Every random draw of training is seeded: :func:`seed_everything` seeds python, numpy and torch,
:func:`loader_worker_seed` seeds a DataLoader worker's numpy and python from its torch seed, and
:func:`rng_state` / :func:`set_rng_state` carry every generator's state through a checkpoint (as
tensors and plain types: checkpoints are read with ``weights_only=True``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["kaiming_init", "loader_worker_seed", "rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and all CUDA devices).

    Args:
        seed: Any integer; numpy receives it modulo 2**32.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def kaiming_init(model: nn.Module, mode: str = "fan_in", nonlinearity: str = "relu") -> nn.Module:
    """Kaiming-normal initialisation of every convolution and linear layer (He et al. 2015).

    Weights of ``Conv1d/2d/3d`` and ``Linear`` layers are drawn from
    ``N(0, gain² / fan)``; their biases are zeroed. Normalisation layers get weight 1, bias 0.
    Uses the global torch generator: call :func:`seed_everything` first for a reproducible draw.

    Args:
        model: The network (modified in place).
        mode: ``"fan_in"`` (preserves forward variance) or ``"fan_out"`` (backward variance).
        nonlinearity: The activation that follows the layers (``"relu"``, ``"leaky_relu"``...).

    Returns:
        The same model, for chaining.

    Raises:
        ValueError: If ``mode`` is not ``"fan_in"`` or ``"fan_out"``.
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return model


def loader_worker_seed(worker_id: int) -> None:
    """Seed a DataLoader worker's numpy and python generators from its torch seed."""
    # torch seeds each worker with base_seed + worker_id (base_seed from the loader's generator);
    # numpy and random follow from it so augmentations drawn with them are reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain types (a checkpoint is read with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators' states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
