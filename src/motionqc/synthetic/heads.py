"""Pretraining data for the sample profile: augmented heads, splits by head, a rendered synthetic set.

The paper pretrains on 462 real heads × 300 motion samples on GPUs. The sample profile has three
real heads and a 2-core CPU, so it (1) multiplies the heads into *pseudo-subjects* with seeded
spatial augmentations (affine + elastic: new head shapes, same tissue contrast), (2) splits by
real head so the test split is anatomy the network never saw, and (3) renders the synthetic samples
once (motion + the authors' augmentations, in worker processes) into an in-memory tensor, so the
training epochs spend every CPU cycle on SFCN rather than on re-simulating motion.

On GPUs (the ``paper`` profile: 462 heads × 300 samples at 1 mm, far too many to render) the
motion is simulated *inside the training loop on the accelerator*: :class:`MotionSourceSet`
serves each row's clean source (after the CPU-side flip and elastic deformation) with its motion
and intensity parameters, and :class:`DeviceMotion`, given to the trainer as its
``batch_transform``, applies k-space motion (``simulate_motion(..., backend="torch")``), gamma,
bias field and the min-max rescale to the batch on the device.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset, Subset

from motionqc.models.encoder import predict_motion
from motionqc.models.soft_labels import BIN_RANGE
from motionqc.physics.device import N_BIAS, DeviceMotion, bias_field
from motionqc.synthetic.motion_sets import SyntheticMotionDataset, row_params

__all__ = [
    "DeviceMotion",
    "MotionSourceSet",
    "RenderedSet",
    "bias_field",
    "predict_split",
    "augment_heads",
    "head_of",
    "head_splits",
    "render_synthetic",
]

_SEP = "~"  # pseudo-subject id = "<real head>~<k>"


def head_of(source: str) -> str:
    """Return the real head a pseudo-subject id (``"colin27~3"``) was made from."""
    return source.split(_SEP, 1)[0]


def augment_heads(
    heads: Mapping[str, tio.ScalarImage],
    n: int,
    seed: int = 0,
    *,
    keep_original: bool = True,
    scales: float = 0.1,
    degrees: float = 8.0,
    translation: float = 4.0,
    max_displacement: float = 6.0,
) -> dict[str, tio.ScalarImage]:
    """Draw seeded pseudo-subjects from each real head (random affine + elastic deformation).

    Args:
        heads: Real head id → preprocessed image (one channel).
        n: Pseudo-subjects per head (including the unmodified head when ``keep_original``).
        seed: Base seed; each (head, k) has its own derived seed.
        keep_original: Make ``k = 0`` the head itself.
        scales: Isotropic scaling range ±``scales`` (torchio ``RandomAffine``).
        degrees: Rotation range ±``degrees`` per axis.
        translation: Translation range ±mm per axis.
        max_displacement: Elastic deformation's maximal displacement (mm).

    Returns:
        ``"<head>~<k>"`` → image, in head then k order.

    Raises:
        ValueError: If ``n`` is below 1 or a head id contains ``"~"``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out: dict[str, tio.ScalarImage] = {}
    for h_idx, (vid, image) in enumerate(heads.items()):
        if _SEP in vid:
            raise ValueError(f"head id {vid!r} must not contain {_SEP!r}")
        for k in range(n):
            if k == 0 and keep_original:
                out[f"{vid}{_SEP}{k}"] = image
                continue
            transform = tio.Compose(
                [
                    tio.RandomAffine(
                        scales=scales,
                        degrees=degrees,
                        translation=translation,
                        default_pad_value="minimum",
                    ),
                    tio.RandomElasticDeformation(
                        num_control_points=7, max_displacement=max_displacement
                    ),
                ]
            )
            state = np.random.SeedSequence([int(seed), h_idx, k]).generate_state(1)[0]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(state))
                new = transform(image)
            out[f"{vid}{_SEP}{k}"] = tio.ScalarImage(tensor=new.data.clone(), affine=image.affine)
    return out


def head_splits(
    sources: Iterable[str], test_heads: Sequence[str], val_per_head: int = 1
) -> dict[str, str]:
    """Split pseudo-subjects by real head: unseen anatomy for testing.

    Every pseudo-subject of a head in ``test_heads`` goes to ``test``; of the other heads, the
    last ``val_per_head`` pseudo-subjects of each go to ``val`` and the rest to ``train``.

    Args:
        sources: Pseudo-subject ids (``"<head>~<k>"``).
        test_heads: Real heads kept for testing.
        val_per_head: Pseudo-subjects per training head held out for validation.

    Returns:
        Source id → ``train`` / ``val`` / ``test``.

    Raises:
        ValueError: If no head is left for training, or a test head is unknown.
    """
    ids = list(sources)
    by_head: dict[str, list[str]] = {}
    for s in ids:
        by_head.setdefault(head_of(s), []).append(s)
    unknown = sorted(set(test_heads) - set(by_head))
    if unknown:
        raise ValueError(f"test head(s) not among the sources: {', '.join(unknown)}")
    if not set(by_head) - set(test_heads):
        raise ValueError("every head is a test head: none left for training")
    out = {}
    for head, members in by_head.items():
        members = sorted(members, key=lambda s: int(s.split(_SEP, 1)[1]) if _SEP in s else 0)
        for i, s in enumerate(members):
            if head in test_heads:
                out[s] = "test"
            elif i >= len(members) - val_per_head and len(members) > val_per_head:
                out[s] = "val"
            else:
                out[s] = "train"
    return out


class RenderedSet(Dataset):
    """Rendered synthetic samples held in memory (float16), served as ``(image, label)``.

    Attributes:
        images: ``(N, 1, X, Y, Z)`` float16 tensor.
        labels: ``(N,)`` float32 labels (mm).
        table: The parameter rows the samples came from (same order).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, table: pd.DataFrame) -> None:
        if len(images) != len(labels) or len(images) != len(table):
            raise ValueError("images, labels and table must have the same length")
        self.images, self.labels, self.table = images, labels, table.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image float32 (1, X, Y, Z), label)``."""
        return self.images[i].float(), self.labels[i]


def _table_key(table: pd.DataFrame, volumes: Mapping[str, tio.ScalarImage], augment: bool) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(table, index=False).values.tobytes())
    for vid in sorted(set(table["source"])):
        h.update(vid.encode())
        h.update(volumes[vid].data.numpy().tobytes())
    h.update(json.dumps({"augment": augment}).encode())
    return h.hexdigest()[:16]


def _collate(batch: list[dict[str, object]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([b["image"] for b in batch]).half()  # type: ignore[misc]
    labels = torch.tensor([b["label"] for b in batch], dtype=torch.float32)
    return images, labels


def render_synthetic(
    table: pd.DataFrame,
    volumes: Mapping[str, tio.ScalarImage],
    split: str,
    *,
    augment: bool = True,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RenderedSet:
    """Materialise one split of a synthetic parameter table (motion + augmentations) in memory.

    Each sample is exactly ``SyntheticMotionDataset(table, volumes, split)[i]``; rendering runs
    in ``num_workers`` processes (one torch thread each). With ``cache_dir`` the result is stored
    as ``synthetic_<split>_<key>.pt`` keyed by the table, the source voxels and the options, and
    re-used by a later run.

    Args:
        table: Parameter table (:func:`motionqc.synthetic.motion_sets.build_parameter_table`).
        volumes: Source id → preprocessed image.
        split: ``train``, ``val`` or ``test``.
        augment: Apply the authors' extra augmentations.
        num_workers: Rendering processes.
        cache_dir: Folder of the cache (``None``: no cache).
        progress: Show a progress bar.

    Returns:
        The :class:`RenderedSet`.
    """
    from tqdm.auto import tqdm

    dataset = SyntheticMotionDataset(table, volumes, split=split, augment=augment)
    rows = dataset.table
    cache = None
    if cache_dir is not None:
        used = {s: volumes[s] for s in set(rows["source"])}
        cache = Path(cache_dir) / f"synthetic_{split}_{_table_key(rows, used, augment)}.pt"
        if cache.is_file():
            state = torch.load(cache, map_location="cpu", weights_only=True)
            return RenderedSet(state["images"], state["labels"], rows)
    loader = DataLoader(
        dataset,
        batch_size=8,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=lambda _: torch.set_num_threads(1),
        persistent_workers=False,
    )
    images, labels = [], []
    batches = iter(loader)
    for x, y in tqdm(batches, desc=f"render {split}", disable=not progress, leave=False):
        images.append(x)
        labels.append(y)
    # Drop the exhausted iterator now: left to a later garbage collection, it can be collected
    # inside the next loader's forked workers, whose check "can only test a child process" fails
    # (noise printed in the notebook, not an error).
    del batches
    gc.collect()
    out = RenderedSet(torch.cat(images), torch.cat(labels), rows)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"images": out.images, "labels": out.labels}, tmp)
        tmp.replace(cache)
    return out


# --------------------------------------------------------------------------------------------
# motion on the training device
# --------------------------------------------------------------------------------------------
class MotionSourceSet(Dataset):
    """Clean sources and their motion rows, for motion simulated on the training device.

    The CPU-side part of :class:`motionqc.synthetic.motion_sets.SyntheticMotionDataset`: per row, the source
    with the left-right flip and elastic deformation (the same seeded draws as that dataset, so
    the same geometry), plus every parameter the device needs for the rest of the authors' chain
    — the motion (padded to the table's largest number of transforms; ``n`` says how many are
    real), gamma exponent, bias-field coefficients and rescale maximum. The flip/elastic/intensity
    decisions and the rescale maximum are the row's, as in the CPU dataset; the gamma exponent and
    bias coefficients are drawn from the row's seeded generator (same distributions as TorchIO's
    ``RandomGamma(log_gamma=(-0.1, 0.1))`` and ``RandomBiasField(coefficients=(0, 0.35))``), not
    from TorchIO's torch generator, so those two values differ from the CPU dataset's.

    Args:
        table: Parameter table (:func:`motionqc.synthetic.motion_sets.build_parameter_table`).
        volumes: Source id → preprocessed ``tio.ScalarImage`` (one channel).
        split: Keep only this split (``None``: all rows).
        **options: ``augment``, ``p_elastic``, ``p_flip``, ``p_intensity``: those of the CPU
            dataset, with its defaults.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        volumes: Mapping[str, tio.ScalarImage],
        split: str | None = None,
        **options: bool | float,
    ) -> None:
        if "backend" in options:
            raise TypeError("MotionSourceSet simulates no motion: it takes no backend")
        self._cpu = SyntheticMotionDataset(table, volumes, split, **options)  # type: ignore[arg-type]
        self.table = self._cpu.table
        self.augment = self._cpu.augment
        self.max_transforms = max(1, int(self.table["n"].max())) if len(self.table) else 1

    def __len__(self) -> int:
        return len(self.table)

    @property
    def labels(self) -> torch.Tensor:
        """``(N,)`` float32 labels (mm), in row order."""
        return torch.as_tensor(self.table["label"].to_numpy(), dtype=torch.float32)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Return ``(inputs, label)``; ``inputs`` holds ``image`` (1, X, Y, Z) and the parameters."""
        row, rng, image = self._cpu.row_source(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(row["seed"]))
            image = self._cpu.pre_motion(image, rng)
        inputs = {
            "image": image.data.float(),
            "affine": torch.as_tensor(np.asarray(image.affine), dtype=torch.float64),
            **self._device_parameters(row, rng),
        }
        return inputs, torch.tensor(float(row["label"]), dtype=torch.float32)

    def parameters(self, index: int) -> dict[str, torch.Tensor]:
        """A row's parameters as :meth:`__getitem__` gives them, without the image work.

        Returns:
            ``n``, ``degrees``, ``translation``, ``times``, ``gamma``, ``bias``, ``rescale_max``
            (as in the inputs), ``flip`` and ``elastic`` (the CPU-side decisions) and ``label``.
        """
        row = self.table.iloc[index]
        rng = np.random.default_rng(int(row["seed"]) + 1)
        flip, elastic = self._cpu.pre_motion_decisions(rng)
        return {
            **self._device_parameters(row, rng),
            "flip": torch.tensor(flip),
            "elastic": torch.tensor(elastic),
            "label": torch.tensor(float(row["label"]), dtype=torch.float32),
        }

    def _device_parameters(
        self, row: pd.Series, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """The motion (padded) and intensity parameters, drawn after the pre-motion decisions."""
        gamma, bias, rescale = 1.0, np.zeros(N_BIAS), 0.0
        if self.augment:
            use_gamma = rng.uniform() < self._cpu.p_intensity
            use_bias = rng.uniform() < self._cpu.p_intensity
            rescale = float(rng.uniform(0.9, 1.1))
            if use_gamma:
                gamma = float(np.exp(rng.uniform(-0.1, 0.1)))
            if use_bias:
                bias = rng.uniform(0.0, 0.35, N_BIAS)
        deg, tra, tim = row_params(row)
        m = self.max_transforms
        n = len(tim)
        pad_deg, pad_tra = np.zeros((m, 3)), np.zeros((m, 3))
        pad_tim = np.ones(m, dtype=np.float32)
        pad_deg[:n], pad_tra[:n], pad_tim[:n] = deg, tra, tim
        return {
            "n": torch.tensor(n, dtype=torch.int64),
            "degrees": torch.as_tensor(pad_deg),
            "translation": torch.as_tensor(pad_tra),
            "times": torch.as_tensor(pad_tim),
            "gamma": torch.tensor(gamma, dtype=torch.float32),
            "bias": torch.as_tensor(bias, dtype=torch.float32),
            "rescale_max": torch.tensor(rescale, dtype=torch.float32),
        }


def predict_split(
    model: torch.nn.Module,
    dataset: RenderedSet | MotionSourceSet,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    batch_transform: DeviceMotion | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    channels_last: bool = False,
    bin_range: Sequence[float] = BIN_RANGE,
) -> pd.DataFrame:
    """Score samples of a synthetic split with the encoder: truth, prediction, spread, source.

    Works on both kinds of split: a :class:`RenderedSet` (images in memory) and a
    :class:`MotionSourceSet` (clean sources; pass ``batch_transform=DeviceMotion()`` so each
    batch is corrupted on the model's device first). Inputs go through
    :func:`motionqc.models.encoder.predict_motion`, so they are scaled as at inference.

    Args:
        model: The trained SFCN.
        dataset: The split.
        indices: Rows to score (default: all), in this order.
        batch_transform: Applied to each batch on the model's device (motion on the device).
        batch_size: Volumes per forward pass.
        precision: ``"fp32"`` or ``"bf16"``.
        channels_last: Run with ``channels_last_3d``.
        bin_range: The bins the model was trained with.

    Returns:
        One row per sample: ``true``, ``pred``, ``std`` (mm) and ``source``.
    """
    keep = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    device = next(model.parameters()).device
    loader = DataLoader(Subset(dataset, keep.tolist()), batch_size=batch_size)
    scores, stds = [], []
    for x, _ in loader:
        if isinstance(x, Mapping):
            if batch_transform is None:
                raise ValueError(
                    "this split holds clean sources: pass batch_transform=DeviceMotion()"
                )
            x = batch_transform({k: v.to(device) for k, v in x.items()})
        elif batch_transform is not None:
            x = batch_transform(x.to(device))
        score, std = predict_motion(
            model,
            x,
            bin_range=bin_range,
            batch_size=batch_size,
            precision=precision,
            channels_last=channels_last,
        )
        scores.append(score)
        stds.append(std)
    empty = np.zeros(0, np.float32)
    return pd.DataFrame(
        {
            "true": dataset.labels.numpy()[keep],
            "pred": np.concatenate(scores) if scores else empty,
            "std": np.concatenate(stds) if stds else empty,
            "source": dataset.table["source"].to_numpy()[keep],
        }
    )
