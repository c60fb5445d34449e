"""Where and how the models run: devices, precision, threads, loader workers, batch sizes.

torch is imported inside the functions that need it: the command line reads the core-count
defaults at start-up without importing it.

One resolver for each: the scoring pipeline, the command line and the benchmarks read them from
here. The measurements behind the CPU defaults are in ``figures/tables/bench_score.csv``
(``make bench``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "cpu_has_native_bf16",
    "default_batch_size",
    "default_num_workers",
    "default_threads",
    "distributed_info",
    "training_autocast",
    "training_device",
    "resolve_device",
    "resolve_precision",
    "usable_cores",
]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_num_workers(device_type: str = "cpu") -> int:
    """Loader processes by default.

    On CUDA, half the usable cores (1 to 8): the GPU would otherwise wait on loading. On CPU, one
    per 8 usable cores (none below 8): loading and preprocessing a volume takes a fraction of its
    forward pass, so on few cores a worker mostly takes cores from the model (``make bench``).

    Args:
        device_type: ``"cpu"`` or ``"cuda"`` (where the model runs).

    Returns:
        The number of DataLoader workers.
    """
    cores = usable_cores()
    if device_type == "cuda":
        return max(1, min(8, cores // 2))
    return min(8, cores // 8)


def default_batch_size(device_type: str = "cpu") -> int:
    """Volumes per forward pass by default: 16 on CUDA, 1 on CPU.

    On CPU a batch of one 1 mm volume keeps the activations of each layer closer to the caches,
    and larger batches scored fewer volumes per minute (``make bench``).

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.

    Returns:
        The batch size.
    """
    return 16 if device_type == "cuda" else 1


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return ``cuda`` when available for ``"auto"`` (or ``None``), else the named device.

    Raises:
        ValueError: For a name torch does not know, a CUDA device on a machine without CUDA, or
            a CUDA index beyond the devices present (one line, for the command line).
    """
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N") from exc
    if out.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine")
        if out.index is not None and out.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif out.type != "cpu":
        raise ValueError(f"device {str(device)!r}: motionqc runs on cpu or cuda")
    return out


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX).

    Elsewhere bf16 autocast is emulated and far slower than fp32, so ``precision="auto"`` stays
    in fp32 there.
    """
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # oneDNN's own check also says yes where AVX-512 only emulates bf16
        flags = {
            f
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("flags")
            for f in line.split(":", 1)[1].split()
        }
        if not flags & {"avx512_bf16", "amx_bf16"}:
            return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an old or unusual build: assume no fast bf16
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype of inference for a precision name on a device (``None``: fp32).

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 on CPUs with native bf16 support
            — AVX512-BF16/AMX — and on CUDA GPUs that support it, fp16 AMP on older GPUs, else fp32).
        device: Where the model runs.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``None``.

    Raises:
        ValueError: For an unknown precision name.
    """
    import torch

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def default_threads(device: torch.device) -> int | None:
    """Return the scoring process's torch threads: on CPU, every usable core.

    Loader workers sleep most of the time (a volume loads in a fraction of its forward pass), so
    the model keeps every core (``benchmarks/bench_score.py``).

    Args:
        device: Where the model runs (``None`` is returned for GPUs: torch's default).

    Returns:
        The thread count, or ``None``.
    """
    if device.type != "cpu":
        return None
    return usable_cores()


def distributed_info() -> tuple[int, int, int]:
    """Return ``(rank, world_size, local_rank)`` from an initialised group or torchrun's env."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return rank, world, int(os.environ.get("LOCAL_RANK", rank))
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def training_device(device: str | None, local_rank: int, distributed: bool) -> torch.device:
    """The device a training process runs on.

    Args:
        device: ``None`` (CUDA device ``local_rank`` when CUDA is available, else the CPU) or a
            torch device name; a bare ``"cuda"`` becomes device ``local_rank`` under DDP and
            the current device otherwise.
        local_rank: This process's rank on its node.
        distributed: Whether training is data-parallel over several processes.

    Returns:
        The device.
    """
    import torch

    if device is None:
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
    return dev


def training_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype of training for a precision name (``None``: plain fp32).

    ``"auto"`` means what it means for inference (:func:`resolve_precision`): the fastest
    precision that is known to keep the results, here AMP on CUDA (bf16 where supported, else
    fp16 with a grad scaler) and fp32 on every CPU, where bf16 training is slower without native
    bf16 and changes the optimisation where it is native. ``"bf16"`` also autocasts on CPU;
    ``"fp16"`` needs CUDA.

    Raises:
        ValueError: For ``"fp16"`` off CUDA.
    """
    import torch

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    return torch.float16
