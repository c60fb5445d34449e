"""Cortical thickness of many volumes: parallel processes, one row per volume, a content cache.

:func:`thickness_batch` runs :func:`motionqc.evaluation.thickness.cortical_thickness` over many
volumes in worker processes, reports each failure in its row (one bad volume loses nothing else)
and, with a cache folder, reads back results keyed by :func:`thickness_cache_key`: the volume's
voxels, its mask's non-zero voxels, every resolved setting, the ``antspyx`` version and the
pipeline's :data:`~motionqc.evaluation.thickness.PIPELINE_VERSION`.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import inspect
import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from motionqc.evaluation import thickness as direct
from motionqc.evaluation.thickness import (
    VolumeLike,
    array_voxel_size,
    as_array,
    configure_ants,
    cortical_thickness,
    one_line,
    volume_name,
)

__all__ = ["BATCH_COLUMNS", "thickness_batch", "thickness_cache_key"]


BATCH_COLUMNS: tuple[str, ...] = (
    "volume",
    "thickness_mm",
    "gm_volume_ml",
    "seconds",
    "status",
    "error",
    "cached",
)


def _batch_worker_init(seed: int, threads: int) -> None:
    configure_ants(seed, threads)


def _failed_row(name: str, seconds: float, exc: BaseException) -> dict[str, Any]:
    return {
        "volume": name,
        "thickness_mm": float("nan"),
        "gm_volume_ml": float("nan"),
        "seconds": seconds,
        "status": "failed",
        "error": one_line(f"{type(exc).__name__}: {exc}"),
        "cached": False,
    }


def _batch_one(item: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    name = str(item["volume"])
    start = time.perf_counter()
    try:
        res = cortical_thickness(item["image"], item["mask"], name=name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure is reported in its row
        return _failed_row(name, time.perf_counter() - start, exc)
    return {
        "volume": name,
        "thickness_mm": res.thickness_mm,
        "gm_volume_ml": res.gm_volume_ml,
        "seconds": res.seconds,
        "status": "ok",
        "error": "",
    }


def _normalise_items(items: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, item in enumerate(items):
        if isinstance(item, Mapping):
            entry = dict(item)
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 3:
            entry = {"volume": item[0], "image": item[1], "mask": item[2]}
        else:
            raise ValueError(
                f"item {k}: expected a mapping with volume/image/mask or a (volume, image, mask) "
                f"tuple, got {type(item).__name__}"
            )
        missing = [key for key in ("image", "mask") if key not in entry]
        if missing:
            raise ValueError(f"item {k}: missing {', '.join(missing)}")
        entry.setdefault("volume", volume_name(entry["image"], None))
        out.append(entry)
    names = [str(e["volume"]) for e in out]
    if len(set(names)) != len(names):
        raise ValueError("volume names in a thickness batch must be unique")
    return out


def _voxels_digest(
    volume: VolumeLike, what: str, name: str, voxel_size_mm: Any, binary: bool = False
) -> bytes:
    data, zooms, _ = as_array(volume, what, name)
    if binary:  # a mask: only "non-zero" matters
        data = (data > 0).astype(np.uint8)
    zooms = zooms or array_voxel_size(voxel_size_mm)
    digest = hashlib.sha256()
    digest.update(repr((data.shape, str(data.dtype), [round(float(z), 6) for z in zooms])).encode())
    digest.update(np.ascontiguousarray(data).tobytes())
    return digest.digest()


def _plain(value: Any) -> Any:
    """A setting as the cache key sees it.

    Numbers become floats (``5`` and ``5.0`` are one setting), sequences lists of floats.
    """
    if isinstance(value, (tuple, list)):
        return [float(x) for x in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def thickness_cache_key(
    image: VolumeLike, mask: VolumeLike, settings: Mapping[str, Any], name: str = "volume"
) -> str:
    """The key a cached thickness result is stored under.

    It is the SHA-256 of what the result depends on: the image's voxels, shape, data type and
    voxel size, the mask's non-zero voxels, every setting of :func:`cortical_thickness` (passed
    or left at its default; seed and thread count included), the installed ``antspyx`` version
    and :data:`~motionqc.evaluation.thickness.PIPELINE_VERSION`. The file name does not enter it, so a renamed copy of the same
    volume finds its result.

    Args:
        image: T1w head (path, nibabel image or array).
        mask: Brain mask on the same grid.
        settings: Keyword arguments of :func:`cortical_thickness`.
        name: Name used in messages if a volume cannot be read.

    Returns:
        64 hexadecimal characters.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        ants_version = version("antspyx")
    except PackageNotFoundError:  # pragma: no cover - ANTs is a core dependency
        ants_version = "absent"
    bound = inspect.signature(cortical_thickness).bind_partial(**settings)
    bound.apply_defaults()  # a setting left at its default is keyed by that default's value
    resolved = {k: v for k, v in bound.arguments.items() if k not in ("image", "mask", "name")}
    voxel_size = resolved["voxel_size_mm"]
    digest = hashlib.sha256()
    digest.update(_voxels_digest(image, "image", name, voxel_size))
    digest.update(_voxels_digest(mask, "mask", name, voxel_size, binary=True))
    clean = {k: _plain(v) for k, v in resolved.items()}
    identity = {"settings": clean, "antspyx": ants_version, "pipeline": direct.PIPELINE_VERSION}
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cache_read(path: Path) -> dict[str, Any] | None:
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or unreadable: computed again (and rewritten)
    if not isinstance(row, dict) or row.get("status") != "ok":
        return None
    try:
        value = float(row["thickness_mm"])
        gm = float(row["gm_volume_ml"])
        seconds = float(row["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (np.isfinite(value) and value > 0):
        return None
    return {"thickness_mm": value, "gm_volume_ml": gm, "seconds": seconds}


def thickness_batch(
    items: Iterable[Mapping[str, Any] | tuple[str, VolumeLike, VolumeLike]],
    n_jobs: int = 2,
    *,
    threads_per_job: int = 1,
    seed: int = 0,
    progress: bool = True,
    start_method: str = "spawn",
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Mean cortical thickness of many volumes, in parallel processes.

    Each volume runs :func:`cortical_thickness` in a worker process (``spawn`` by default: ITK
    threads and fork do not mix); a failure is written in that volume's row and the others go
    on. Workers set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` before their first ANTs call, so
    results are reproducible. Pass paths rather than in-memory images where possible: they are
    cheaper to send to the workers. In a script, call it under ``if __name__ == "__main__":``
    (``spawn`` re-imports the main module in every worker); notebooks need nothing.

    Args:
        items: Mappings with keys ``volume`` (name), ``image`` and ``mask`` (paths, nibabel
            images or arrays), or ``(volume, image, mask)`` tuples. Extra mapping keys are
            ignored.
        n_jobs: Worker processes; ``1`` runs in this process (no pool; the thread count then
            only applies if ANTs has not run in this process yet, so with ``cache_dir`` prefer
            ``n_jobs >= 2``: results are cached under ``threads_per_job``).
        threads_per_job: ITK threads per worker.
        seed: ANTs seed (``ANTS_RANDOM_SEED``), the same for every volume.
        progress: Show a ``tqdm.auto`` progress bar.
        start_method: ``"spawn"`` or ``"forkserver"``.
        cache_dir: Folder of cached results, one JSON file per volume named by
            :func:`thickness_cache_key` (its voxels, its mask's and every setting). A volume whose
            key is there is not computed again (its row has ``cached`` true and the first run's
            ``seconds``); a computed ``ok`` row is written there. Failures are never cached.
            ``None``: no cache.
        **kwargs: Settings passed on to :func:`cortical_thickness` (``spacing_mm``,
            ``iterations``, …).

    Returns:
        One row per item, in input order, with columns ``volume, thickness_mm, gm_volume_ml,
        seconds, status`` (``"ok"`` or ``"failed"``) ``, error`` (one line, empty when ok) and
        ``cached`` (read from ``cache_dir`` rather than computed).

    Raises:
        ValueError: If an item is malformed, names repeat, or a setting is out of range.
    """
    from tqdm.auto import tqdm

    if int(n_jobs) < 1 or int(threads_per_job) < 1:
        raise ValueError(
            f"n_jobs and threads_per_job must be >= 1, got {n_jobs}, {threads_per_job}"
        )
    if start_method not in ("spawn", "forkserver"):
        raise ValueError(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
    for reserved in ("name", "seed", "threads"):
        if reserved in kwargs:
            raise ValueError(f"{reserved!r} is set by thickness_batch, not passed through")
    entries = _normalise_items(items)
    settings = dict(kwargs, seed=int(seed), threads=int(threads_per_job))
    rows: list[dict[str, Any] | None] = [None] * len(entries)
    keys: list[str | None] = [None] * len(entries)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for k, entry in enumerate(entries):
            name = str(entry["volume"])
            try:
                keys[k] = thickness_cache_key(entry["image"], entry["mask"], settings, name)
            except Exception as exc:  # noqa: BLE001 - unreadable input: its row says why
                rows[k] = _failed_row(name, float("nan"), exc)
                continue
            hit = _cache_read(cache / f"{keys[k]}.json")
            if hit is not None:
                rows[k] = {"volume": name, **hit, "status": "ok", "error": "", "cached": True}
    todo = [k for k in range(len(entries)) if rows[k] is None]
    bar = tqdm(total=len(entries), desc="cortical thickness", unit="vol", disable=not progress)
    bar.update(len(entries) - len(todo))
    try:
        if int(n_jobs) == 1 or not todo:
            for k in todo:
                rows[k] = _finish(_batch_one(entries[k], settings), cache, keys[k])
                bar.update()
        else:
            context = mp.get_context(start_method)
            with cf.ProcessPoolExecutor(
                max_workers=min(int(n_jobs), len(todo)),
                mp_context=context,
                initializer=_batch_worker_init,
                initargs=(int(seed), int(threads_per_job)),
            ) as pool:
                futures = {pool.submit(_batch_one, entries[k], settings): k for k in todo}
                for future in cf.as_completed(futures):
                    k = futures[future]
                    try:
                        rows[k] = _finish(future.result(), cache, keys[k])
                    except Exception as exc:  # noqa: BLE001 - e.g. a worker killed for memory
                        rows[k] = _failed_row(str(entries[k]["volume"]), float("nan"), exc)
                    bar.update()
    finally:
        bar.close()
    return pd.DataFrame(rows, columns=list(BATCH_COLUMNS))


def _finish(row: dict[str, Any], cache: Path | None, key: str | None) -> dict[str, Any]:
    """Mark a computed row; store an ``ok`` one under its key at once.

    A batch stopped later keeps what it had finished.
    """
    row["cached"] = False
    if cache is not None and key is not None and row["status"] == "ok":
        target = cache / f"{key}.json"
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        fields = ("volume", "thickness_mm", "gm_volume_ml", "seconds", "status")
        try:
            partial.write_text(json.dumps({f: row[f] for f in fields}))
            os.replace(partial, target)  # a run killed mid-write leaves no half file under the key
        except OSError as exc:  # the result stands; only its cache entry is lost
            warnings.warn(f"{row['volume']}: not cached ({one_line(exc)})", stacklevel=2)
    return row
