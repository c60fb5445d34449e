"""Guards of a scoring run: one process per shard, one encoder per folder, one file per name.

:func:`shard_lock` keeps a shard from being scored twice at once, :func:`claim_encoder` records
the encoder of a derivative folder atomically so that shards started at once with different
encoders cannot both write into it, :func:`select_files` refuses files whose BIDS names collide
(their rows, derivatives and figures would overwrite each other), and :func:`loader_workers`
caps the loader processes by the volumes and the usable cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from motionqc.app.derivatives import shard_items, table_text
from motionqc.data.bids import bids_name
from motionqc.runtime.devices import usable_cores

__all__ = ["ENCODER_RECORD", "claim_encoder", "loader_workers", "select_files", "shard_lock"]

ENCODER_RECORD = ".motionqc-encoder.json"
"""The file of a derivative folder naming the encoder its scores come from (hidden from BIDS)."""


@contextlib.contextmanager
def shard_lock(output_dir: Path, index: int, count: int) -> Iterator[None]:
    """Hold an exclusive lock on one shard of a derivative folder while it is scored.

    Args:
        output_dir: The derivative folder.
        index: Shard index.
        count: Number of shards.

    Raises:
        ValueError: On entry (one line), when another process holds the lock (the same shard
            started twice would score every volume twice).
    """
    import fcntl

    lock_path = Path(output_dir) / f".motionqc-shard-{index:04d}of{count:04d}.lock"
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{output_dir}: shard {index}/{count} is being scored by another motionqc "
                f"process (lock {lock_path.name}); wait for it to end or score another shard"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def claim_encoder(output_dir: Path, model: dict[str, object]) -> None:
    """Record the folder's encoder, or check it against the one recorded, atomically.

    The first run in a folder creates :data:`ENCODER_RECORD` exclusively (``O_CREAT | O_EXCL``,
    which fails if the file exists), so of two shards started at once with different encoders, exactly one
    writes its record and the other is refused before it writes anything.

    Args:
        output_dir: The derivative folder.
        model: :meth:`motionqc.app.scorer.Scorer.describe` (``sha256``, ``input_intensity``,
            ``checkpoint``).

    Raises:
        ValueError: If the folder's scores come from another encoder or input scaling (one line).
    """
    record = Path(output_dir) / ENCODER_RECORD
    mine = {k: model.get(k) for k in ("sha256", "input_intensity", "checkpoint")}
    text = (json.dumps(mine) + "\n").encode()
    try:  # O_EXCL: of two processes creating it at once, exactly one succeeds (no hard link
        # needed: FAT, FUSE and some SMB mounts have none)
        fd = os.open(record, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, text)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            record.unlink(missing_ok=True)  # a full disk leaves no half record behind
            raise
        os.close(fd)
        return
    theirs: dict = {}
    for _ in range(50):  # the creator may not have written it yet: wait up to ~1 s
        try:
            theirs = json.loads(record.read_text())
            break
        except (OSError, ValueError):
            time.sleep(0.02)
    else:
        raise ValueError(
            f"{record}: unreadable encoder record (not the JSON motionqc writes); remove it if "
            "the folder holds no scores, or use a new output folder"
        )
    if theirs.get("sha256") != mine["sha256"]:
        raise ValueError(
            f"{output_dir}: holds scores from another encoder ({theirs.get('checkpoint')}, "
            f"recorded in {ENCODER_RECORD}); use a new output folder"
        )
    if theirs.get("input_intensity") != mine["input_intensity"]:
        raise ValueError(
            f"{output_dir}: holds scores made with input scaling {theirs.get('input_intensity')}, "
            f"not {mine['input_intensity']}; use a new output folder"
        )


def select_files(
    files: Sequence[Path], index: int, count: int, bids_dir: str | Path
) -> tuple[list[Path], dict[str, str]]:
    """A shard's files to score, and the names refused because several files share them.

    Files are keyed by their BIDS name as the table holds it (:func:`table_text`): ``X.nii``
    beside ``X.nii.gz``, a name without its ``ses-`` entity in a ``ses-`` folder beside the same
    name outside it, or names differing only in whitespace would share one row, one derivative
    and one figure. None of them is scored; each shared name is refused once, in the shard that
    holds its first file (sorted by path), with one line naming every file.

    Args:
        files: Every T1w of the selection (all shards).
        index: Shard index.
        count: Number of shards.
        bids_dir: The BIDS dataset (files are named relative to it).

    Returns:
        ``(files to score, {name: message})`` for this shard.
    """
    groups: dict[str, list[Path]] = {}
    for file in sorted(files, key=str):
        groups.setdefault(table_text(bids_name(file)), []).append(file)
    root = Path(bids_dir)
    keep, refused = [], {}
    for file in shard_items(files, index, count):
        name = table_text(bids_name(file))
        group = groups[name]
        if len(group) == 1:
            keep.append(file)
        elif file == group[0]:
            rels = []
            for other in group:
                try:
                    rels.append(other.relative_to(root).as_posix())
                except ValueError:
                    rels.append(str(other))
            refused[name] = (
                f"{len(group)} files share this name, so none is scored (a BIDS name must be "
                f"unique: keep or rename one): {', '.join(rels)}"
            )
    return keep, refused


def loader_workers(requested: int, n_items: int) -> int:
    """Loader processes to start: as requested, but no more than the items or usable cores."""
    return max(0, min(int(requested), int(n_items), usable_cores()))
