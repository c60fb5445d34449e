"""The pretrained motion encoder as a self-describing file: save, load, predict.

A pretraining run (notebook 03) writes ``encoder.pt``: the SFCN weights plus everything a later
stage needs to use them correctly — the voxel size and grid the network was trained on, the soft
label bins, the profile, the training metrics. Every consumer (transfer, scratch comparison,
thickness, the ``motionqc score`` CLI, the demo) loads it with :func:`load_encoder` and
preprocesses volumes with the geometry it records, never with a guess.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motionqc.models.sfcn import SFCN
from motionqc.models.soft_labels import BIN_RANGE, N_BINS, SIGMA, decode, predictive_std

__all__ = [
    "ENCODER_FORMAT",
    "INPUT_INTENSITY",
    "EncoderError",
    "foreign_file_kind",
    "default_encoder_path",
    "released_encoder_path",
    "load_encoder",
    "encoder_forward",
    "predict_motion",
    "save_encoder",
    "scale_input",
    "unit_range",
]

ENCODER_FORMAT = "motionqc-encoder/1"

INPUT_INTENSITY = "unit_range"
"""How inference scales the encoder's inputs (:func:`unit_range`). Embedding caches and scoring
derivatives record it, so that values computed with another scaling are never reused."""


INPUT_SCALINGS = ("unit_range", "percentile")
"""The input scalings an encoder file can name (``input_intensity``); older files: ``unit_range``."""

PERCENTILES = (0.5, 99.5)
"""Percentiles of the ``percentile`` scaling (robust to a few bright or dark voxels)."""


class EncoderError(RuntimeError):
    """An encoder file that is missing, unreadable or not a motionqc encoder."""


def default_encoder_path(profile: str) -> Path:
    """Return where notebook 03 writes the encoder of a profile: ``checkpoints/<profile>/encoder.pt``.

    Args:
        profile: Profile name (``smoke``, ``sample``, ``paper``).

    Returns:
        The path (its folder is created; the file may not exist yet).
    """
    from motionqc import artefacts

    return artefacts.encoder(profile)


def released_encoder_path() -> Path:
    """Return the released encoder shipped inside the package (``motionqc/weights/``).

    ``make pretrain`` writes it (``motion_encoder.pt``, with ``motion_encoder.json`` beside it
    saying how it was made); ``pip install`` brings it. ``motionqc score`` uses it when no
    ``--checkpoint`` is given.
    """
    return Path(__file__).resolve().parents[1] / "weights" / "motion_encoder.pt"


def save_encoder(
    path: str | Path,
    model: SFCN,
    *,
    spacing_mm: float,
    shape: Sequence[int],
    bin_range: Sequence[float] = BIN_RANGE,
    n_bins: int = N_BINS,
    sigma: float = SIGMA,
    info: Mapping[str, Any] | None = None,
    input_intensity: str = INPUT_INTENSITY,
    temperature: float = 1.0,
    score_convention: Mapping[str, Any] | None = None,
    half: bool = False,
    detail_mm: float | None = None,
) -> Path:
    """Write a trained SFCN and its preprocessing geometry to ``path`` (atomically).

    Args:
        path: Output file (``.pt``).
        model: The trained network.
        spacing_mm: Isotropic voxel size of its inputs.
        shape: Input grid (X, Y, Z).
        bin_range: Soft-label bin range (mm).
        n_bins: Number of bins (the model's outputs).
        sigma: Soft-label width (mm).
        info: Anything else worth keeping (profile, metrics, seed, versions): plain types only
            (the file is read back with ``weights_only=True``).
        input_intensity: The input scaling the network was trained with (:func:`scale_input`).
        temperature: Softmax temperature fitted on validation (1: none).
        score_convention: The score convention of its labels (``SCORE_CONVENTION.as_dict()``).
        half: Store the weights in float16 (loaded back as float32).
        detail_mm: The fine grid of its detail channels
            (:func:`motionqc.data.detail.encoder_input`; ``None``: none).

    Returns:
        The path written.
    """
    if input_intensity not in INPUT_SCALINGS:
        raise ValueError(f"input_intensity must be one of {', '.join(INPUT_SCALINGS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": ENCODER_FORMAT,
        "model": {
            k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in model.state_dict().items()
        },
        "n_outputs": int(model.n_outputs),
        "channels": list(model.channels),
        "unshuffle": int(model.unshuffle),
        "detail_norm": str(getattr(model, "detail_norm", "none")),
        "in_channels": int(model.in_channels),
        "detail_mm": None if detail_mm is None else float(detail_mm),
        "dropout": float(getattr(model.dropout, "p", 0.0)),
        "spacing_mm": float(spacing_mm),
        "shape": [int(s) for s in shape],
        "bin_range": [float(b) for b in bin_range],
        "n_bins": int(n_bins),
        "sigma": float(sigma),
        "info": json.loads(json.dumps(dict(info or {}))),  # plain JSON types only
        "input_intensity": str(input_intensity),
        "temperature": float(temperature),
        "score_convention": dict(score_convention or {}),
        "torch": str(torch.__version__),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def foreign_file_kind(path: str | Path) -> str | None:
    """What a file handed over as a checkpoint is when it cannot be one, from its first bytes.

    PyTorch writes a zip archive (``PK``) or, before 1.6, a pickle (``0x80``); a NIfTI volume
    (``.nii``: a 348- or 540-byte header; ``.nii.gz``: gzip) or any other file is named for what
    it is, instead of an unpickling error that blames the checkpoint's contents.

    Args:
        path: The file.

    Returns:
        ``"a NIfTI volume"``, ``"a gzip file"``, ``"an empty file"``, ``"not a PyTorch file"``
        or ``None`` when it can be a PyTorch file.
    """
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "an empty file"
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    name = Path(path).name.lower()
    if head.startswith(b"\x1f\x8b"):
        return "a NIfTI volume (gzip)" if name.endswith(".nii.gz") else "a gzip file"
    if head in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return "a NIfTI volume"  # sizeof_hdr 348 or 540, either byte order
    return f"not a PyTorch file (it starts with {head!r})"


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[SFCN, dict]:
    """Load an encoder written by :func:`save_encoder`, in eval mode.

    Args:
        path: The ``encoder.pt`` file.
        device: Where to put the model.

    Returns:
        ``(model, meta)``; ``meta`` holds ``spacing_mm``, ``shape``, ``bin_range``, ``n_bins``,
        ``sigma``, ``info``, ``input_intensity``, ``temperature``, ``score_convention`` and
        ``detail_mm``.

    Raises:
        EncoderError: If the file is missing, unreadable or not an encoder file.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(
            f"{path}: no encoder file (run notebook 03, `make reproduce`, or pass --checkpoint)"
        )
    foreign = foreign_file_kind(path)
    if foreign is not None:
        raise EncoderError(f"{path}: {foreign}, not an encoder file (pass encoder.pt)")
    try:  # weights_only: a file can hold tensors and plain types, never code to run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        reason = " ".join(str(exc).split())
        if "weights_only" in reason or "Unsupported global" in reason:
            raise EncoderError(
                f"{path}: holds Python objects beyond tensors and plain types (an older motionqc "
                "wrote torch.__version__ as an object); it is not loaded, since that could run "
                "code: retrain it, or re-save it from a trusted session with save_encoder"
            ) from exc
        raise EncoderError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != ENCODER_FORMAT:
        raise EncoderError(f"{path}: not a motionqc encoder file (format {ENCODER_FORMAT})")
    try:
        model = SFCN(
            n_outputs=state["n_outputs"],
            channels=state["channels"],
            dropout=state["dropout"],
            unshuffle=state.get("unshuffle", 1),  # files written before the knob: none
            in_channels=state.get("in_channels", 1),
            detail_norm=state.get("detail_norm", "none"),  # files written before the knob
        )
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise EncoderError(
            f"{path}: not a usable motionqc encoder ({type(exc).__name__}: {detail})"
        ) from exc
    model.to(device).eval()
    meta = {k: state[k] for k in ("spacing_mm", "shape", "bin_range", "n_bins", "sigma", "info")}
    meta["shape"] = tuple(meta["shape"])
    meta["input_intensity"] = state.get("input_intensity", "unit_range")
    meta["temperature"] = float(state.get("temperature", 1.0))
    meta["score_convention"] = dict(state.get("score_convention") or {})
    detail = state.get("detail_mm")
    meta["detail_mm"] = None if detail is None else float(detail)
    meta["path"] = str(path)
    return model, meta


def scale_input(x: torch.Tensor, method: str = INPUT_INTENSITY) -> torch.Tensor:
    """Scale each volume of a batch as its encoder was trained (``meta["input_intensity"]``).

    Only channel 0 (the head) is scaled; further channels (:mod:`motionqc.data.detail`) are
    ratios already on their scale and pass through.

    Args:
        x: ``(B, C, X, Y, Z)`` batch.
        method: ``"unit_range"`` (min-max to [0, 1], :func:`unit_range`) or ``"percentile"``
            (the 0.5th and 99.5th percentiles of each volume to 0 and 1; a few extreme voxels
            cannot move the rest).

    Returns:
        The scaled batch (float32).

    Raises:
        ValueError: For an unknown method.
    """
    if x.dim() == 5 and x.shape[1] > 1:
        return torch.cat([scale_input(x[:, :1], method), x[:, 1:].float()], dim=1)
    if method == "unit_range":
        return unit_range(x)
    if method != "percentile":
        raise ValueError(
            f"input scaling must be one of {', '.join(INPUT_SCALINGS)}, not {method!r}"
        )
    x = x.float()
    flat = x.flatten(1)
    n = flat.shape[1]
    ranks = [min(n, max(1, int(round(p / 100 * n)))) for p in PERCENTILES]  # nearest rank
    lo = flat.kthvalue(ranks[0], dim=1).values
    hi = flat.kthvalue(ranks[1], dim=1).values
    shape = (-1,) + (1,) * (x.dim() - 1)
    span = (hi - lo).clamp_min(1e-8)
    return (x - lo.view(shape)) / span.view(shape)


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Rescale each volume of a batch to [0, 1] (min-max), the intensity range the encoder trained on.

    Training samples pass through the authors' augmentations, which end with a min-max rescale
    (``RescaleIntensity`` to [0, ~1]); :func:`motionqc.data.volumes.preprocess` scales by the mean instead.
    Every inference path (:func:`predict_motion`, :func:`motionqc.training.transfer.embed`, the scorer)
    applies this first, so inference sees the training range. It is idempotent on data already in
    [0, 1] with a zero minimum, and a constant volume maps to zeros.

    Args:
        x: ``(B, C, X, Y, Z)`` batch.

    Returns:
        The rescaled batch (float32).
    """
    x = x.float()
    dims = tuple(range(1, x.dim()))
    lo = x.amin(dim=dims, keepdim=True)
    span = (x.amax(dim=dims, keepdim=True) - lo).clamp_min(1e-8)
    return (x - lo) / span


@torch.inference_mode()
def encoder_forward(
    model: SFCN,
    images: torch.Tensor,
    *,
    input_intensity: str,
    temperature: float,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder on a batch of preprocessed volumes: the one inference step of the package.

    :func:`predict_motion` and ``motionqc score`` (:class:`motionqc.app.scorer.Scorer`) both run
    it: the batch goes to the model's device, gets the encoder's input scaling, runs under
    autocast when ``autocast_dtype`` is given, and the head's log-probabilities are divided by the
    temperature in fp32.

    Args:
        model: The SFCN (in eval mode).
        images: ``(B, 1, X, Y, Z)`` preprocessed volumes.
        input_intensity: The encoder's input scaling (``meta["input_intensity"]``).
        temperature: The encoder's softmax temperature (``meta["temperature"]``).
        autocast_dtype: ``torch.bfloat16`` or ``torch.float16`` autocast; ``None``: fp32.
        channels_last: Feed the batch in ``channels_last_3d`` memory format.

    Returns:
        ``(fmap, out)``: the encoder's feature map (for the QC head's embedding) and the tempered
        log-probabilities ``(B, bins)`` (fp32).
    """
    device = next(model.parameters()).device
    x = scale_input(images.to(device, non_blocking=True), input_intensity)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(
        device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    ):
        fmap = model.encode(x)
        out = model.head(fmap)
    return fmap, out.float() / float(temperature)


def predict_motion(
    model: SFCN,
    images: torch.Tensor | Sequence[torch.Tensor],
    *,
    bin_range: Sequence[float] = BIN_RANGE,
    batch_size: int = 8,
    precision: str = "fp32",
    channels_last: bool = False,
    input_intensity: str = INPUT_INTENSITY,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict the motion score (mm) and its spread for a stack of preprocessed volumes.

    Args:
        model: A trained SFCN (put in eval mode here).
        images: ``(N, 1, X, Y, Z)`` tensor or a sequence of ``(1, X, Y, Z)`` tensors.
        bin_range: The bins the model was trained with (``meta["bin_range"]``).
        batch_size: Volumes per forward pass.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        channels_last: Run with ``channels_last_3d`` memory format.
        input_intensity: The encoder's input scaling (``meta["input_intensity"]``).
        temperature: The encoder's softmax temperature (``meta["temperature"]``).

    Returns:
        ``(score, std)``: expected score and predictive standard deviation per volume, mm.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    items = list(images) if not isinstance(images, torch.Tensor) else list(images.unbind(0))
    scores, stds = [], []
    for start in range(0, len(items), batch_size):
        _, out = encoder_forward(
            model,
            torch.stack([t.float() for t in items[start : start + batch_size]]),
            input_intensity=input_intensity,
            temperature=temperature,
            autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
            channels_last=channels_last,
        )
        scores.append(decode(out, bin_range).cpu())
        stds.append(predictive_std(out, bin_range).cpu())
    if not items:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(scores).numpy(), torch.cat(stds).numpy()
