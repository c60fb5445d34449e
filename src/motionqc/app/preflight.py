"""Checks around a command, each ending in one line that blames the right thing.

An output path that is a file, a folder that cannot be written, a full disk, a ``--threads`` far
above the cores, a missing module, subjects named by ``--participant-label`` that the dataset does
not hold, folders of the dataset that cannot be read: each is said in one line naming the path and
the problem, instead of a traceback or a message about something else (issue #43, D15–D17).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from motionqc.app.text import one_line, printable

__all__ = [
    "clamp_threads",
    "import_error_line",
    "os_error_line",
    "output_dir_problem",
    "selection_warnings",
]

_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file size limit was reached",
    errno.EROFS: "a read-only file system",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.ENAMETOOLONG: "a file name too long for the file system",
}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path(s), the reason and what it means.

    Args:
        exc: The error (``exc.filename`` names the path when the OS call had one).

    Returns:
        ``"<path>: <strerror> (<hint>)"``, escaped for a terminal.
    """
    reason = exc.strerror or type(exc).__name__
    hint = _HINTS.get(exc.errno or 0)
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    text = f"{where}: {reason}" if where != "" else reason
    return one_line(f"{text} ({hint})" if hint else text)


def output_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an output folder before anything is written, or ``None``.

    Args:
        path: The output folder (it may not exist yet).

    Returns:
        A one-line message naming the path, or ``None``.
    """
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate) and not candidate.is_dir():
            what = "the output folder" if candidate == path else f"a parent of {printable(path)}"
            return f"{printable(candidate)}: is a file, not a folder ({what}); name a folder"
    return None


def clamp_threads(requested: int) -> tuple[int, str | None]:
    """At most the usable cores.

    ``--threads 1000`` makes 1000 threads' stacks, which a memory limit refuses deep inside
    torch (once reported as an unreadable encoder file).

    Args:
        requested: ``--threads`` (0: the default).

    Returns:
        ``(threads, warning)``: the threads to use and a one-line warning when lowered.
    """
    from motionqc.runtime.devices import usable_cores

    cores = usable_cores()
    if requested <= cores:
        return requested, None
    return cores, f"--threads {requested}: more than the {cores} usable core(s); using {cores}"


def import_error_line(exc: ImportError, qc_head: Path | None) -> str:
    """One line for a module that cannot be imported, blaming ``--qc-head`` only when it is at fault.

    Args:
        exc: The error.
        qc_head: ``--qc-head`` (``None`` when not given).

    Returns:
        The message.
    """
    module = exc.name or "a module"
    if qc_head is not None and module.startswith("motionqc.models.qc_head"):
        return f"--qc-head needs motionqc.models.qc_head, which cannot be imported here ({exc})"
    return one_line(
        f"cannot import {module}, which motionqc needs here ({exc}); reinstall motionqc"
    )


def _listable(folder: Path) -> str | None:
    try:
        with os.scandir(folder):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _unreadable_folders(root: Path) -> list[str]:
    """The subject, session and ``anat`` folders that cannot be listed, with the reason."""
    found: list[str] = []
    try:
        subjects = sorted(p for p in root.iterdir() if p.name.startswith("sub-"))
    except OSError:
        return found  # the dataset folder itself: find_t1w says so
    for subject in subjects:
        if not os.path.lexists(subject) or (os.path.exists(subject) and not os.path.isdir(subject)):
            continue
        reason = _listable(subject)
        if reason is None and not os.access(subject, os.X_OK):
            reason = "permission denied"  # listable, but its folders cannot be entered
        if reason is not None:
            found.append(f"{printable(subject)} ({reason})")
            continue
        folders = [subject]
        try:
            folders += sorted(
                p for p in subject.iterdir() if p.name.startswith("ses-") and os.path.isdir(p)
            )
        except OSError as exc:
            found.append(f"{printable(subject)} ({exc.strerror or exc})")
            continue
        for folder in folders:
            if folder is not subject and (reason := _listable(folder)) is not None:
                found.append(f"{printable(folder)} ({reason})")
                continue
            anat = folder / "anat"
            if os.path.lexists(anat) and (reason := _listable(anat)) is not None:
                found.append(f"{printable(anat)} ({reason})")
    return found


def selection_warnings(bids_dir: Path, participant_label: Sequence[str] | None) -> list[str]:
    """What ``score`` would otherwise skip without a word, one line each.

    Args:
        bids_dir: The BIDS dataset.
        participant_label: ``--participant-label`` (``None``: every subject).

    Returns:
        One line per folder of the dataset that cannot be read (its T1w images would be missed)
        and one for the labels without any ``sub-<label>/[ses-*/]anat/*_T1w.nii[.gz]``.
    """
    from motionqc.data.bids import find_t1w, parse_entities

    root = Path(bids_dir)
    if not os.path.isdir(root):  # os.path: False, not PermissionError, for an unreachable root
        return []  # find_t1w says so, as an error
    lines = [
        f"{folder}: cannot be read, so its T1w images are not scored"
        for folder in _unreadable_folders(root)
    ]
    if participant_label:
        wanted = [label.removeprefix("sub-") for label in participant_label]
        present = {parse_entities(p).get("sub") for p in find_t1w(root, wanted)}
        missing = [label for label in dict.fromkeys(wanted) if label not in present]
        if missing:
            lines.append(
                f"--participant-label {' '.join(missing)}: no "
                + ", ".join(f"sub-{label}" for label in missing[:10])
                + f"{' ...' if len(missing) > 10 else ''} T1w image "
                f"(sub-<label>/[ses-*/]anat/*_T1w.nii[.gz]) in {root}"
            )
    return [one_line(line) for line in lines]
