"""motionqc.runtime.devices: device, precision, thread, loader-worker and batch-size defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from motionqc.runtime import devices as runtime
from motionqc.runtime.devices import (
    default_batch_size,
    default_num_workers,
    default_threads,
    resolve_device,
    resolve_precision,
)


def test_precision_names() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
        native = bool(flags & {"avx512_bf16", "amx_bf16"})  # what oneDNN needs for fast bf16
        assert resolve_precision("auto", cpu) is (torch.bfloat16 if native else None), flags & {
            "avx512_bf16",
            "amx_bf16",
        }
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    # emulated bf16 is 30-70x slower than fp32 on an AVX2-only CPU: auto must stay in fp32 there
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else None
    assert resolve_precision("auto", torch.device("cpu")) is expected
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize(
    ("cores", "cpu_workers", "cuda_workers"),
    [(1, 0, 1), (2, 0, 1), (8, 1, 4), (32, 4, 8), (128, 8, 8)],
)
def test_loader_and_thread_defaults(
    monkeypatch: pytest.MonkeyPatch, cores: int, cpu_workers: int, cuda_workers: int
) -> None:
    monkeypatch.setattr(runtime, "usable_cores", lambda: cores)
    assert default_num_workers("cpu") == cpu_workers
    assert default_num_workers("cuda") == cuda_workers
    # loader workers sleep most of the time: the model keeps every core
    assert default_threads(torch.device("cpu")) == cores
    assert default_threads(torch.device("cuda")) is None
    assert (default_batch_size("cpu"), default_batch_size("cuda")) == (1, 16)


def test_device_names() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="motionqc runs on cpu or cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
