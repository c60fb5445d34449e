"""One place for paths: nothing in the package or the notebooks builds a path from the CWD.

Papermill and nbval execute notebooks from other working directories, so every location is
resolved from the package itself (a source checkout) or from environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "repo_root",
    "data_dir",
    "sample_dir",
    "manifest_dir",
    "figures_dir",
    "tables_dir",
    "build_dir",
    "checkpoints_dir",
]


def repo_root() -> Path:
    """Return the root of the motionqc source checkout.

    ``MOTIONQC_ROOT`` overrides the location; otherwise the checkout that holds this package
    (``src/motionqc``) is used.

    Returns:
        The repository root (the folder holding ``data_manifest/`` and ``notebooks/``).

    Raises:
        RuntimeError: If no checkout can be found (the package was installed without its repo).
    """
    env = os.environ.get("MOTIONQC_ROOT")
    root = Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[2]
    if not (root / "data_manifest").is_dir():
        raise RuntimeError(
            f"{root}: not a motionqc checkout (no data_manifest/); clone the repository and "
            "`pip install -e .`, or set MOTIONQC_ROOT to the checkout"
        )
    return root


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Return the ignored data folder (``MOTIONQC_DATA`` or ``<repo>/data``)."""
    env = os.environ.get("MOTIONQC_DATA")
    return Path(env).expanduser().resolve() if env else repo_root() / "data"


def sample_dir() -> Path:
    """Return the folder the sample volumes are gathered into (``<data>/sample``)."""
    return data_dir() / "sample"


def manifest_dir() -> Path:
    """Return the committed ``data_manifest/`` folder."""
    return repo_root() / "data_manifest"


def figures_dir() -> Path:
    """Return the folder every figure goes to (created if missing).

    ``figures/`` for the ``sample`` and ``paper`` profiles (what ``make reproduce`` regenerates);
    ``build/figures/smoke`` under the ``smoke`` profile, so that CI's notebook runs never overwrite
    the committed results. ``MOTIONQC_FIGURES`` overrides both.
    """
    env = os.environ.get("MOTIONQC_FIGURES")
    if env:
        return _ensure(Path(env).expanduser().resolve())
    if os.environ.get("MOTIONQC_PROFILE", "").strip().lower() == "smoke":
        return _ensure(repo_root() / "build" / "figures" / "smoke")
    return _ensure(repo_root() / "figures")


def tables_dir() -> Path:
    """Return ``figures/tables/`` (created if missing): every table the notebooks produce."""
    return _ensure(figures_dir() / "tables")


def build_dir() -> Path:
    """Return the ignored ``build/`` folder (executed notebooks, caches), created if missing."""
    return _ensure(repo_root() / "build")


def checkpoints_dir() -> Path:
    """Return the ignored ``checkpoints/`` folder, created if missing.

    ``MOTIONQC_CHECKPOINTS`` overrides it; every run's hand-overs (:mod:`motionqc.artefacts`)
    live under it.
    """
    env = os.environ.get("MOTIONQC_CHECKPOINTS")
    return _ensure(Path(env).expanduser().resolve() if env else repo_root() / "checkpoints")
