"""``motionqc simulate``: corrupt a NIfTI volume with motion of a given score, with its sidecar.

The one motion path of the package (:func:`motionqc.physics.motion.simulate_motion`, TorchIO's
model) applied to a file as stored, with parameters drawn at the requested score under
:data:`motionqc.physics.score.SCORE_CONVENTION`; the JSON sidecar records the parameters, the score
and its convention.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import motionqc

__all__ = ["check_simulation_output", "simulate_file", "simulation_sidecar_path"]


def simulate_file(
    input_path: str | Path,
    output_path: str | Path,
    score: float,
    seed: int = 0,
    n_transforms: int | None = None,
    force: bool = False,
) -> dict[str, object]:
    """Corrupt a NIfTI volume with motion of a given score; write it and its JSON sidecar.

    The motion is applied to the array as stored (the k-space segments run along its last axis, as
    TorchIO does for that file), with the file's own affine and voxel size; the score's sphere is
    centred on the volume.

    Args:
        input_path: Input volume (3D, or 4D with one volume).
        output_path: Output ``.nii``/``.nii.gz``; the sidecar is the same name with ``.json``.
        score: Target motion score, mm.
        seed: Seed of the parameter draw.
        n_transforms: Number of transforms (default: drawn from the seed).
        force: Replace an existing output or sidecar that ``motionqc simulate`` did not write.

    Returns:
        The sidecar's content.

    Raises:
        motionqc.data.volumes.VolumeError: If the input cannot be used.
        ValueError: For an output not named .nii or .nii.gz, a negative score or a bad seed, an
            output that is the input (never replaced) or that would replace a file ``simulate``
            did not write (unless ``force``).
    """
    import nibabel as nib
    import numpy as np
    import torch

    from motionqc.data.volumes import load_volume
    from motionqc.physics.motion import simulate_motion
    from motionqc.physics.score import SCORE_CONVENTION
    from motionqc.synthetic.parameters import sample_scored_motion

    input_path, output_path = Path(input_path), Path(output_path)
    if not output_path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(
            f"{output_path}: the output must be a NIfTI file named .nii or .nii.gz "
            f"(not {output_path.suffix or 'a name without extension'})"
        )
    check_simulation_output(input_path, output_path, force)
    load_volume(input_path)  # validation only: one-line errors for unusable files
    image = nib.load(str(input_path))
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    while data.ndim > 3:
        data = data[..., 0]
    affine = np.asarray(image.affine, dtype=float)
    params = sample_scored_motion(score, seed, n_transforms, affine=affine, shape=data.shape)
    moved = simulate_motion(
        torch.from_numpy(np.ascontiguousarray(data)),
        params["degrees"],
        params["translation"],
        params["times"],
        affine,
    ).numpy()
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_data_shape(moved.shape)
    out_image = nib.Nifti1Image(moved.astype(np.float32), affine, header=header)
    out_image.header.set_slope_inter(1.0, 0.0)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".tmp-{os.getpid()}-{output_path.name}")  # same extension
    _replace_with(output_path, tmp, lambda: nib.save(out_image, str(tmp)))
    sidecar = {
        "Source": str(input_path.resolve()),
        "TargetScore": float(score),
        "Score": float(params["score"]),
        "ScoreUnits": "mm",
        "ScoreDefinition": (
            "Jenkinson RMS deviation, radius 80 mm, sphere centred on the volume, mean over "
            "consecutive pairs of [identity, T1..Tn] of the rigid head poses the simulation applies"
        ),
        "ScoreConvention": SCORE_CONVENTION.as_dict(),
        "Seed": int(seed),
        "NTransforms": int(params["n"]),
        "Degrees": np.asarray(params["degrees"]).round(6).tolist(),
        "Translation": np.asarray(params["translation"]).round(6).tolist(),
        "TranslationUnits": "mm",
        "Times": np.asarray(params["times"], dtype=float).round(6).tolist(),
        "MotionModel": "torchio.Motion (linear), k-space segments along the last array axis",
        "GeneratedBy": {"Name": "motionqc", "Version": motionqc.__version__},
    }
    sidecar_path = simulation_sidecar_path(output_path)
    sidecar_tmp = sidecar_path.with_name(f".tmp-{os.getpid()}-{sidecar_path.name}")
    text = json.dumps(sidecar, indent=2) + "\n"
    _replace_with(sidecar_path, sidecar_tmp, lambda: sidecar_tmp.write_text(text))
    return sidecar


def _replace_with(path: Path, tmp: Path, write: Callable[[], object]) -> None:
    """Write ``tmp`` with ``write`` and move it onto ``path``, leaving no stray temporary file.

    On any failure (a full disk, a folder that cannot be written) ``tmp`` is removed and the
    error raised.
    """
    try:
        write()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def simulation_sidecar_path(path: Path) -> Path:
    """The sidecar of a simulated volume: its name with ``.json`` for ``.nii``/``.nii.gz``."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_name(name + ".json")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False


def _written_by_simulate(sidecar: Path) -> bool:
    """Whether a JSON file is a sidecar ``motionqc simulate`` wrote."""
    try:
        data = json.loads(sidecar.read_text())
        return data["GeneratedBy"]["Name"] == "motionqc" and "TargetScore" in data
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_simulation_output(input_path: Path, output_path: Path, force: bool = False) -> None:
    """Refuse, in one line, an output that would replace the input or a file of someone else.

    The input (or its sidecar) is never replaced. Without ``force``, an existing sidecar that
    ``simulate`` did not write (a scanner's ``X.json`` beside ``X.nii.gz`` when writing ``X.nii``)
    and an existing volume without such a sidecar are refused; a re-run over ``simulate``'s own
    output replaces it.

    Args:
        input_path: The input volume.
        output_path: The output volume.
        force: Replace files ``simulate`` did not write.

    Raises:
        ValueError: If the output must not be written.
    """
    sidecar = simulation_sidecar_path(output_path)
    for target in (output_path, sidecar):
        if _same_file(input_path, target):
            raise ValueError(
                f"{output_path}: {target.name} is the input {input_path}; not replaced"
            )
    if force:
        return
    if sidecar.exists() and not _written_by_simulate(sidecar):
        raise ValueError(
            f"{output_path}: would replace {sidecar}, which motionqc simulate did not write "
            "(a scanner's sidecar?); choose another name or pass --force"
        )
    if output_path.exists() and not _written_by_simulate(sidecar):
        raise ValueError(
            f"{output_path}: exists and motionqc simulate did not write it; choose another name "
            "or pass --force"
        )
