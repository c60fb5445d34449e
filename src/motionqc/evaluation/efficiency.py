"""The efficiency table: resource logs of pretraining, transfer and scratch runs, compared.

Every number comes from the JSON logs that :class:`motionqc.runtime.resources.ResourceMonitor` writes
beside each run; nothing is typed in. The poster's layout: max memory, max power, duration per
setting and a "Decreased (%)" row, transfer vs scratch:

    decrease = 100 · (1 − transfer / scratch)

The break-even number of uses — after how many trainings of a QC model the one-off pretraining
has paid for itself — is

    n* = C_pretrain / (C_scratch − C_transfer)

for a cost C per use (duration in seconds, or energy in joules where power was measured).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

__all__ = [
    "COLUMNS",
    "load_resource_log",
    "efficiency_table",
    "decrease_percent",
    "break_even_uses",
    "hms",
    "parse_hms",
]

COLUMNS = ["setting", "device", "max_memory_gb", "memory_kind", "max_power_w", "duration_s"]
"""Columns of ``figures/tables/efficiency.csv``."""

_GB = 1e9


def load_resource_log(path: str | Path, setting: str | None = None) -> dict[str, object]:
    """Read one resource log into a row of the efficiency table.

    Args:
        path: A ``resources.json`` written by :class:`~motionqc.runtime.resources.ResourceMonitor`.
        setting: Row name (default: the log's ``label``).

    Returns:
        A dict with :data:`COLUMNS` plus ``energy_j``. ``memory_kind`` says what the memory is:
        ``gpu_max_allocated`` (CUDA tensors) or ``peak_rss`` (host resident memory, CPU runs).
        ``max_power_w`` and ``energy_j`` are ``None`` when no GPU power was measured.

    Raises:
        ValueError: If the file is missing or lacks the fields.
    """
    path = Path(path)
    try:
        log = json.loads(path.read_text())
        memory = float(log["peak_memory_bytes"])
        duration = float(log["wall_time_s"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a usable resource log ({exc})") from exc
    kind = log.get("peak_memory_kind") or ("peak_rss" if log.get("device") == "cpu" else "unknown")
    return {
        "setting": setting or log.get("label") or path.parent.name,
        "device": log.get("device_name") or log.get("device"),
        "max_memory_gb": memory / _GB,
        "memory_kind": "gpu_max_allocated" if kind.startswith("cuda") else kind,
        "max_power_w": log.get("max_power_w"),
        "duration_s": duration,
        "energy_j": log.get("energy_j"),
    }


def decrease_percent(transfer: float | None, scratch: float | None) -> float | None:
    """``100 · (1 − transfer / scratch)``, or ``None`` when either is missing."""
    if transfer is None or scratch is None or pd.isna(transfer) or pd.isna(scratch) or scratch == 0:
        return None
    return 100.0 * (1.0 - float(transfer) / float(scratch))


def break_even_uses(pretrain: float, scratch: float, transfer: float) -> float:
    """Uses after which pretraining + transfer costs less than training from scratch each time.

    ``n* = pretrain / (scratch − transfer)``: with ``n`` uses, transfer costs
    ``pretrain + n · transfer`` and scratch ``n · scratch``.

    Args:
        pretrain: One-off pretraining cost.
        scratch: Cost of one scratch training.
        transfer: Cost of one transfer training.

    Returns:
        The break-even count (``inf`` when transfer is not cheaper than scratch).
    """
    saving = float(scratch) - float(transfer)
    return math.inf if saving <= 0 else float(pretrain) / saving


def efficiency_table(logs: Mapping[str, str | Path] | Iterable[str | Path]) -> pd.DataFrame:
    """Build the poster's efficiency table from resource logs.

    Args:
        logs: ``setting → resources.json`` (or paths, named by their labels); settings named
            ``transfer`` and ``scratch`` give the "Decreased (%)" row.

    Returns:
        One row per setting with :data:`COLUMNS`, ``energy_j`` and ``duration`` (hh:mm:ss); a
        final ``Decreased (%)`` row when both transfer and scratch are present, its ``duration``
        the time decrease in percent (two decimals, as the poster prints it).
    """
    items = logs.items() if isinstance(logs, Mapping) else ((None, p) for p in logs)
    rows = [load_resource_log(path, setting) for setting, path in items]
    table = pd.DataFrame(rows)
    if {"transfer", "scratch"} <= set(table["setting"]):
        t = table.set_index("setting").loc["transfer"]
        s = table.set_index("setting").loc["scratch"]
        decreased = {"setting": "Decreased (%)", "device": "", "memory_kind": ""}
        for column in ("max_memory_gb", "max_power_w", "duration_s", "energy_j"):
            decreased[column] = decrease_percent(t[column], s[column])
        table = pd.concat([table, pd.DataFrame([decreased])], ignore_index=True)
    table["duration"] = [  # hh:mm:ss per run; the time decrease (%) in the last row
        hms(v) if r != "Decreased (%)" else ("" if v is None or pd.isna(v) else f"{v:.2f}")
        for r, v in zip(table["setting"], table["duration_s"], strict=True)
    ]
    return table


def hms(seconds: float | None) -> str:
    """Format seconds as ``hh:mm:ss`` (rounded to the second)."""
    if seconds is None or pd.isna(seconds):
        return ""
    total = int(round(float(seconds)))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def parse_hms(text: str) -> int:
    """Parse ``hh:mm:ss`` into seconds.

    Raises:
        ValueError: If the text is not three ``:``-separated integers.
    """
    parts = text.strip().split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected hh:mm:ss, got {text!r}")
    h, m, s = (int(p) for p in parts)
    return 3600 * h + 60 * m + s
