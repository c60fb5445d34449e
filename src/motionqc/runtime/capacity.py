"""Cost of training a model at a given input size, counted without running it (meta device).

For planning runs at the poster's scale on hardware this machine does not have: floating-point
operations per volume from :class:`torch.utils.flop_counter.FlopCounterMode`, and the activation
memory autograd keeps for the backward pass, by summing the bytes of every tensor it saves
(:func:`torch.autograd.graph.saved_tensors_hooks`). Both are computed on the ``meta`` device, so
no memory is allocated and nothing is computed: a 1 mm SFCN costs milliseconds to count.

Saved activations dominate training memory for 3-D CNNs (SFCN's weights, gradients and AdamW
state are 4 × 2.95 M parameters ≈ 47 MB in fp32). A GPU run adds the CUDA context (not counted by
``torch.cuda.max_memory_allocated``), cuDNN workspaces and the caching allocator's rounding, so
treat the count as a lower bound and keep a margin.

    python -m motionqc.runtime.capacity --shape 160 192 160 --batch-size 4 --dtype bf16
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["activation_bytes", "training_flops", "plan"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _meta_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    meta = copy.deepcopy(model).to("meta").to(dtype)
    return meta.train()


def training_flops(model: nn.Module, shape: Sequence[int], batch_size: int = 2) -> float:
    """Floating-point operations of one forward + backward pass, per volume.

    Args:
        model: The model (copied to the meta device; the original is untouched).
        shape: Input grid ``(X, Y, Z)`` of a single-channel volume.
        batch_size: Batch used for counting (BatchNorm needs more than one value per channel);
            the result is divided by it.

    Returns:
        FLOPs per volume (a multiply-add counts as 2).
    """
    meta = _meta_copy(model, torch.float32)
    x = torch.empty(batch_size, 1, *shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        meta(x).sum().backward()
    return counter.get_total_flops() / batch_size


def activation_bytes(
    model: nn.Module, shape: Sequence[int], batch_size: int, dtype: str = "bf16"
) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one training batch.

    Args:
        model: The model (copied to the meta device).
        shape: Input grid ``(X, Y, Z)``.
        batch_size: Volumes per batch (per GPU under DDP).
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"`` activations (mixed precision keeps the
            activations of convolutions in the half type).

    Returns:
        The total size in bytes of the distinct saved tensors.

    Raises:
        ValueError: For an unknown ``dtype`` or a batch smaller than 2 (BatchNorm in training).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 for BatchNorm, got {batch_size}")
    meta = _meta_copy(model, _DTYPES[dtype])
    x = torch.empty(batch_size, 1, *shape, device="meta", dtype=_DTYPES[dtype])
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Parameters are saved too (conv weights); they are not activations.
        if not isinstance(t, nn.Parameter):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = meta(x)
    del out
    return int(sum(seen.values()))


def plan(
    model: nn.Module,
    shape: Sequence[int],
    batch_sizes: Sequence[int] = (2, 4, 8, 16),
    dtypes: Sequence[str] = ("fp32", "bf16"),
) -> list[dict[str, object]]:
    """Activation memory per batch size and precision, with the FLOPs per volume.

    Returns:
        Rows ``shape, dtype, batch_size, activations_gib, gflop_per_volume``.
    """
    gflop = training_flops(model, shape) / 1e9
    return [
        {
            "shape": "x".join(map(str, shape)),
            "dtype": d,
            "batch_size": b,
            "activations_gib": activation_bytes(model, shape, b, d) / 2**30,
            "gflop_per_volume": gflop,
        }
        for d in dtypes
        for b in batch_sizes
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the plan for SFCN at a given input grid."""
    import pandas as pd

    from motionqc.models.sfcn import SFCN

    parser = argparse.ArgumentParser(
        prog="python -m motionqc.runtime.capacity", description=__doc__
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 192, 160))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(_DTYPES))
    args = parser.parse_args(argv)
    rows = plan(SFCN(n_outputs=50), args.shape, args.batch_size, args.dtype)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
