"""Files written whole or not at all, never leaving a temporary file behind.

Every file ``motionqc score`` writes goes to a temporary name in the same folder first and is
moved onto its name when complete (a reader never sees half a file); when writing fails (a full
disk, a file size limit, a folder that cannot be written), the temporary file is removed and the
error raised, so the output folder holds no orphan (issue #43, D15).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["replace_atomically", "temporary_name"]


def temporary_name(path: Path, suffix: str = "") -> Path:
    """The temporary file of ``path`` for this process: ``.<name>.<pid>.tmp<suffix>`` beside it.

    Args:
        path: The file to write.
        suffix: Kept at the end (``".nii.gz"``: nibabel picks the format from the name).

    Returns:
        The temporary path.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def replace_atomically(path: Path, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Write ``path`` through a temporary file: ``write(tmp)``, then move ``tmp`` onto ``path``.

    Args:
        path: The file to write.
        write: Writes the whole content to the path it is given.
        suffix: Kept at the end of the temporary name (:func:`temporary_name`).

    Returns:
        ``path``.

    Raises:
        OSError: When writing or moving fails; the temporary file is removed first.
    """
    tmp = temporary_name(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
