"""Resource monitor: wall time, peak memory and GPU power of a run, written as JSON beside it.

Use it as a context manager around any training or inference run::

    with ResourceMonitor(run_dir / "resources.json", label="pretrain") as mon:
        trainer.fit()
    mon.record["peak_memory_bytes"]

What is measured (all fields are in the JSON; see :meth:`ResourceMonitor.summary`):

- **Wall time**: ``time.perf_counter`` from ``__enter__`` to ``__exit__`` (after a CUDA
  synchronise on GPU runs, so queued kernels are counted), plus ISO-8601 UTC start/end timestamps.
- **Peak memory, headline** (``peak_memory_bytes``, ``peak_memory_kind``): on a CUDA device,
  ``torch.cuda.max_memory_allocated`` since entry (the statistic is reset at entry) — tensors
  only, not the caching allocator's reserve (``cuda_max_reserved_bytes``) nor the CUDA context;
  on CPU, the peak resident set size ``peak_rss_bytes``.
- **Peak RSS** (always recorded, host memory): a background thread samples, every
  ``interval_s``, the RSS of this process plus all its live descendants (DataLoader workers,
  via ``psutil``) and keeps the largest sum (``peak_rss_sampled_bytes``, with its split into
  ``peak_rss_self_bytes`` and ``peak_rss_children_bytes``). On Linux the kernel's high-water mark
  of this process (``VmHWM``, reset at entry through ``/proc/self/clear_refs``) is read too, so
  the main process's own peak is exact even between samples; ``peak_rss_bytes`` is the larger of
  the sampled sum and that high-water mark. Spikes of a child that last less than one sampling
  interval can be missed; shared pages (e.g. copy-on-write after ``fork``) are counted once per
  process, so the sum over processes can over-count.
- **Memory the run added** (``peak_rss_increase_bytes``): for runs that share a process with
  earlier work (a notebook kernel already holding data and libraries), where the peak RSS itself
  mostly measures what was there before. It is counted per part — this process's peak (sampled
  or ``VmHWM``) minus its RSS at entry, plus the children's sampled peak minus theirs at entry,
  each floored at 0 — so a descendant that was alive at entry and exits during the run (a worker
  pool of earlier work) cannot hide what this process allocated. On Linux this process's part is
  also counted on its anonymous memory (``RssAnon`` + ``VmSwap``, sampled: heap and tensors,
  not mapped files) and the larger of the two is kept: the total RSS also holds pages of mapped
  libraries (libtorch alone is hundreds of MB), which the kernel may drop under memory pressure
  during the run, hiding an equal amount of new allocation (seen in CI: 64 MiB allocated, 8 KiB
  counted).
- **GPU power** on NVIDIA GPUs: NVML (``pynvml``, package ``nvidia-ml-py``) board power sampled by
  the same thread (``max_power_w``, ``mean_power_w``), and the energy counter difference
  (``energy_j``) where the GPU has one. Without an NVIDIA GPU or NVML these fields are ``null``
  (``None``), never 0.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ResourceMonitor", "anon_bytes", "device_name", "rss_bytes"]

try:  # psutil comes with the Jupyter stack; without it only this process's RSS is read.
    import psutil
except ImportError:  # pragma: no cover - exercised only on minimal installs
    psutil = None  # type: ignore[assignment]


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def anon_bytes() -> int | None:
    """Return this process's anonymous memory (``RssAnon`` + ``VmSwap``), or ``None`` off Linux."""
    anon = _read_status_kb("RssAnon")
    if anon is None:
        return None
    return anon + (_read_status_kb("VmSwap") or 0)


def rss_bytes(include_children: bool = True) -> tuple[int, int]:
    """Return the current resident set size of this process and of its live descendants.

    Args:
        include_children: Also sum the RSS of every live descendant process (needs ``psutil``).

    Returns:
        ``(self_bytes, children_bytes)``; children is 0 when not requested or not readable.
    """
    if psutil is None:
        own = _read_status_kb("VmRSS") or 0
        return own, 0
    proc = psutil.Process()
    own = proc.memory_info().rss
    children = 0
    if include_children:
        for child in proc.children(recursive=True):
            try:
                children += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
    return own, children


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _torch(required: bool = False) -> Any | None:
    """The torch module when needed: always for CUDA work, else only if the process has it loaded.

    A process that never imported torch ran nothing on a GPU; importing torch just to record that
    would cost seconds and a few hundred MB of the very memory being measured.
    """
    if required or "torch" in sys.modules:
        import torch

        return torch
    return None


def _torch_version() -> str | None:
    """Installed torch version, read from package metadata (without importing torch)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_str(device: torch.device | str) -> str:
    """Normalised device string (``"cpu"``, ``"cuda:0"``); checked by torch when it is loaded."""
    text = str(device)
    torch = _torch(required=text.startswith("cuda"))
    return str(torch.device(device)) if torch is not None else text


def device_name(device: torch.device | str) -> str:
    """Human-readable name of a device: the GPU model for CUDA, the CPU model otherwise.

    Args:
        device: A torch device or its string.

    Returns:
        E.g. ``"NVIDIA H100 80GB HBM3"`` or ``"Intel(R) Xeon(R) Processor"``.
    """
    text = _device_str(device)
    if text.startswith("cuda"):
        torch = _torch(required=True)
        return torch.cuda.get_device_name(torch.device(text))
    return _cpu_name()


class _NvmlPower:
    """NVML handle for one CUDA device: power in W and the energy counter in J (or ``None``)."""

    def __init__(self, device: torch.device) -> None:
        self.handle = None
        self.energy_supported = False
        try:
            import pynvml
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
        except Exception:  # no driver / no NVIDIA GPU
            return
        self._nvml = pynvml
        torch = _torch(required=True)
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = None
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:  # robust to CUDA_VISIBLE_DEVICES reordering
            try:
                text = str(uuid)
                handle = pynvml.nvmlDeviceGetHandleByUUID(
                    text if text.startswith("GPU-") else f"GPU-{text}"
                )
            except Exception:
                handle = None
        if handle is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            physical = int(ids[index]) if index < len(ids) and ids[index].isdigit() else index
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
            except Exception:
                return
        self.handle = handle
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self.energy_supported = True
        except Exception:
            self.energy_supported = False

    def power_w(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return self._nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        except Exception:
            return None

    def energy_j(self) -> float | None:
        if self.handle is None or not self.energy_supported:
            return None
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0
        except Exception:
            return None


class ResourceMonitor:
    """Context manager recording wall time, peak memory and (on NVIDIA GPUs) power of a run.

    Args:
        path: JSON file written at exit (parent folders are created); ``None`` writes nothing
            (the record is still in :attr:`record`).
        device: The device the run uses; ``None`` picks ``cuda`` when available, else ``cpu``.
        profile: Profile name recorded in the JSON; ``None`` reads ``MOTIONQC_PROFILE``.
        label: Free-text name of the run (e.g. ``"pretrain"``).
        interval_s: Sampling period of the background thread (RSS and power), in seconds.
        include_children: Sum the RSS of descendant processes (DataLoader workers).
        extra: More fields to store in the JSON (must be JSON-serialisable).

    Attributes:
        device: The device as a string (``"cpu"``, ``"cuda:0"``).
        record: The summary dict, filled at exit (``None`` before).

    Raises:
        ValueError: If ``interval_s`` is not positive.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        device: torch.device | str | None = None,
        profile: str | None = None,
        label: str | None = None,
        interval_s: float = 0.1,
        include_children: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.path = Path(path) if path is not None else None
        if device is None:
            torch = _torch()
            device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
        self.device = _device_str(device)
        if profile is None:
            from motionqc.profiles import get_profile

            try:
                profile = get_profile().name
            except ValueError:
                profile = os.environ.get("MOTIONQC_PROFILE")
        self.profile = profile
        self.label = label
        self.interval_s = float(interval_s)
        self.include_children = bool(include_children)
        self.extra: dict[str, Any] = dict(extra or {})
        self.record: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rss_entry = 0
        self._rss_entry_self = 0
        self._rss_entry_children = 0
        self._anon_entry: int | None = None
        self._peak_anon = 0

    # -- sampling ---------------------------------------------------------------------------
    def _sample(self) -> None:
        own, children = rss_bytes(self.include_children)
        anon = anon_bytes()
        power = self._nvml.power_w() if self._nvml is not None else None
        with self._lock:
            self._n_samples += 1
            if own + children > self._peak_total:
                self._peak_total = own + children
            self._peak_self = max(self._peak_self, own)
            self._peak_children = max(self._peak_children, children)
            if anon is not None:
                self._peak_anon = max(self._peak_anon, anon)
            if power is not None:
                self._power.append(power)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception:  # a vanished child or NVML hiccup must not kill the run
                continue

    def sample_now(self) -> None:
        """Take one sample immediately (useful right after a known allocation peak)."""
        self._sample()

    # -- context manager --------------------------------------------------------------------
    def __enter__(self) -> ResourceMonitor:
        self._n_samples = 0
        self._peak_total = self._peak_self = self._peak_children = self._peak_anon = 0
        self._power: list[float] = []
        self._cuda = self.device.startswith("cuda") and _torch(required=True).cuda.is_available()
        self._nvml = None
        if self._cuda:
            torch = _torch(required=True)
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._nvml = _NvmlPower(torch.device(self.device))
        self._energy0 = self._nvml.energy_j() if self._nvml is not None else None
        try:  # reset the kernel's RSS high-water mark of this process (Linux)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._start_iso = _now_iso()
        self._t0 = time.perf_counter()
        self._rss_entry_self, self._rss_entry_children = rss_bytes(self.include_children)
        self._anon_entry = anon_bytes()
        self._rss_entry = self._rss_entry_self + self._rss_entry_children
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ResourceMonitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._cuda:
            _torch(required=True).cuda.synchronize(self.device)
        wall = time.perf_counter() - self._t0
        end_iso = _now_iso()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._sample()
        except Exception:
            pass
        self.record = self.summary(wall, end_iso, exc_type)
        if self.path is not None:
            self.write(self.path)

    # -- results ----------------------------------------------------------------------------
    def summary(
        self, wall_s: float, end_iso: str, exc_type: type[BaseException] | None = None
    ) -> dict[str, Any]:
        """Build the record (called at exit).

        Returns:
            A JSON-serialisable dict with ``label, profile, device, device_name, torch_version,
            python_version, num_threads, start_time, end_time, wall_time_s, peak_memory_bytes,
            peak_memory_kind, peak_rss_bytes, peak_rss_sampled_bytes, peak_rss_self_bytes,
            peak_rss_children_bytes, rss_hwm_bytes, rss_at_entry_bytes, peak_rss_increase_bytes,
            anon_at_entry_bytes, peak_anon_bytes, rss_method, cuda_max_allocated_bytes,
            cuda_max_reserved_bytes, max_power_w, mean_power_w, energy_j, n_power_samples,
            n_samples, interval_s, status`` and ``extra``.
        """
        hwm = _read_status_kb("VmHWM") if self._hwm_reset else None
        peak_rss = max(self._peak_total, hwm or 0)
        added_self = max(0, max(self._peak_self, hwm or 0) - self._rss_entry_self)
        if self._anon_entry is not None:
            added_self = max(added_self, self._peak_anon - self._anon_entry)
        cuda_alloc = cuda_reserved = None
        torch = _torch()
        if self._cuda:
            cuda_alloc = int(torch.cuda.max_memory_allocated(self.device))
            cuda_reserved = int(torch.cuda.max_memory_reserved(self.device))
        energy = None
        if self._nvml is not None and self._energy0 is not None:
            e1 = self._nvml.energy_j()
            energy = None if e1 is None else e1 - self._energy0
        power = self._power
        return {
            "label": self.label,
            "profile": self.profile,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "torch_version": torch.__version__ if torch is not None else _torch_version(),
            "python_version": sys.version.split()[0],
            "num_threads": torch.get_num_threads() if torch is not None else None,
            "start_time": self._start_iso,
            "end_time": end_iso,
            "wall_time_s": wall_s,
            "peak_memory_bytes": cuda_alloc if self._cuda else peak_rss,
            "peak_memory_kind": "cuda_max_allocated" if self._cuda else "peak_rss",
            "peak_rss_bytes": peak_rss,
            "peak_rss_sampled_bytes": self._peak_total,
            "peak_rss_self_bytes": self._peak_self,
            "peak_rss_children_bytes": self._peak_children,
            "rss_hwm_bytes": hwm,
            "rss_at_entry_bytes": self._rss_entry,
            "peak_rss_increase_bytes": added_self
            + max(0, self._peak_children - self._rss_entry_children),
            "anon_at_entry_bytes": self._anon_entry,
            "peak_anon_bytes": self._peak_anon if self._anon_entry is not None else None,
            "rss_method": (
                "sampled self+children" + (" and VmHWM of self" if hwm is not None else "")
                if psutil is not None
                else "sampled self" + (" and VmHWM" if hwm is not None else "")
            ),
            "cuda_max_allocated_bytes": cuda_alloc,
            "cuda_max_reserved_bytes": cuda_reserved,
            "max_power_w": max(power) if power else None,
            "mean_power_w": sum(power) / len(power) if power else None,
            "energy_j": energy,
            "n_power_samples": len(power),
            "n_samples": self._n_samples,
            "interval_s": self.interval_s,
            "status": "ok" if exc_type is None else f"error: {exc_type.__name__}",
            "extra": self.extra,
        }

    def write(self, path: str | Path) -> Path:
        """Write :attr:`record` as indented JSON (atomically) and return the path.

        Raises:
            ValueError: If called before the monitored block has finished.
        """
        if self.record is None:
            raise ValueError("nothing to write yet: the monitored block has not finished")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        os.replace(tmp, path)
        return path
