"""The pretraining recipe of the released motion encoder (``make pretrain``): knobs and training.

Motion at the acquisition grid, new intensities every step, a one-cycle schedule that anneals
within its budget. The samples come from the motion pool (:mod:`motionqc.synthetic.pool`: heads
at 1 mm, motion simulated there, then the inference preprocessing) and get new geometry and
intensities at every step (:mod:`motionqc.synthetic.augment`). :class:`RecipeConfig` holds every
knob; :func:`train` runs the steps (AdamW, one-cycle learning rate, resumable checkpoints loaded
with ``weights_only=True``); :mod:`motionqc.training.release` wraps it into ``make pretrain``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from motionqc.data.detail import N_DETAIL
from motionqc.models.sfcn import encoder_shape
from motionqc.models.soft_labels import BIN_RANGE, SoftLabelKL, decode
from motionqc.runtime.devices import distributed_info, training_device
from motionqc.synthetic.augment import augment_batch, crop_batch, geometry_batch
from motionqc.synthetic.batch_motion import MOTION_MODES, MotionBatches
from motionqc.synthetic.pool import source_augment_on

__all__ = [
    "RecipeConfig",
    "RECIPES",
    "train",
    "lr_at",
    "predict_logits",
    "val_inputs",
]


@dataclass(frozen=True)
class RecipeConfig:
    """Every knob of the recipe (recorded with the weights it produces).

    Attributes:
        name: Recipe name (``release``, ``sample``, ``smoke``).
        train_heads: Real heads whose pseudo-subjects train (and validate) the encoder.
        val_heads: Real heads that validate (a manifest's validation split, by subject); empty:
            the last pseudo-subject of each training head validates.
        pseudo_subjects: Pseudo-subjects per head (the first is the head itself; without
            ``val_heads`` the last is held out for validation).
        sim_spacing_mm: Voxel size motion is simulated at (the acquisition grid).
        sim_shape: Grid of the sources at that voxel size.
        spacing_mm: The encoder's voxel size.
        shape: The encoder's grid.
        crop: Training crops of the grid (:func:`motionqc.synthetic.augment.crop_batch`, drawn
            after the augmentation); validation, the test and inference score the whole grid.
            ``None``: the whole grid trains.
        channels: SFCN widths.
        detail: Give the encoder the detail channels (:mod:`motionqc.data.detail`): the
            simulation grid's gradient energy per axis, pooled onto the encoder grid, beside the
            head (SFCN with four input channels).
        detail_norm: What SFCN subtracts from the detail channels (its ``detail_norm``:
            ``"none"``; ``"axes"``: their mean over the three axes at each voxel;
            ``"background"``: their values inside the head).
        unshuffle: SFCN's space-to-depth factor (:func:`motionqc.models.sfcn.space_to_depth`):
            2 on a 2 mm grid runs the 4 mm network on every 2 mm voxel; 1: none.
        dropout: SFCN dropout.
        pool_size: Motion-corrupted training samples rendered.
        val_size: Validation samples rendered (from the held-out pseudo-subjects).
        max_score: Largest target score (mm).
        p_motion_free: Share of samples without motion (label 0).
        steps: Optimiser steps.
        batch_size: Samples per step.
        lr: Peak learning rate of the one-cycle schedule.
        pct_start: Share of the steps spent warming up.
        weight_decay: AdamW weight decay.
        eval_every: Steps between validation passes (and checkpoints).
        seed: Base seed of every draw.
        augment: Probabilities and ranges of the per-step intensity draws
            (:func:`motionqc.synthetic.augment.augment_batch`).
        source_augment: Probabilities and ranges of the draws applied to each pool sample's
            source at the simulation grid, before its motion
            (:func:`motionqc.synthetic.pool.randomise_source`), and of the acquisition noise
            added after it (``p_noise``, ``noise_std``:
            :func:`motionqc.synthetic.pool.acquisition_noise`).
        label_maps: Whole-head label maps whose random-contrast heads
            (:func:`motionqc.synthetic.label_heads.generated_heads`) train beside the real heads.
        heads_per_map: Heads generated from each label map.
        precision: ``"fp32"``, or ``"bf16"``: the training forward pass under bf16 autocast
            (on CPUs with native bf16 and on GPUs; validation and the test stay fp32).
        motion: Where the training samples come from: ``"pool"`` (``pool_size`` samples
            rendered once, on the CPU) or ``"batch"`` (new samples every step, their motion
            simulated on the training device: :class:`motionqc.synthetic.batch_motion.MotionBatches`;
            validation stays a fixed rendered set).
    """

    name: str = "release"
    train_heads: tuple[str, ...] = ("robex_atlas", "mni152_2009")
    val_heads: tuple[str, ...] = ()
    pseudo_subjects: int = 8
    sim_spacing_mm: float = 1.0
    sim_shape: tuple[int, int, int] = (160, 192, 160)
    spacing_mm: float = 4.0
    shape: tuple[int, int, int] = (40, 48, 40)
    crop: tuple[int, int, int] | None = None
    channels: tuple[int, ...] = (32, 64, 128, 256, 256, 64)
    unshuffle: int = 1
    detail: bool = False
    detail_norm: str = "none"
    dropout: float = 0.3
    pool_size: int = 3000
    val_size: int = 96
    max_score: float = 4.0
    p_motion_free: float = 0.08
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-3
    pct_start: float = 0.15
    weight_decay: float = 0.05
    eval_every: int = 250
    seed: int = 0
    augment: dict = field(
        default_factory=lambda: {
            "p_flip": 0.5,
            "log_gamma": 0.15,
            "p_contrast": 0.5,
            "contrast_knots": 4,
            "contrast_strength": 0.5,
            "p_bias": 0.5,
            "bias_coefficient": 0.3,
            "p_noise": 0.15,
            "noise_std": 0.01,
            "p_blur": 0.0,
            "blur_mm": 1.2,
            "p_sharpen": 0.0,
            "sharpen": 1.0,
            "p_geometry": 0.8,
            "zoom": 0.2,
            "rotate_deg": 10.0,
            "shift_mm": 10.0,
        }
    )
    # fmt: off
    source_augment: dict = field(
        default_factory=lambda: {  # every probability 0: no source draw
            "p_remap": 0.0, "remap_knots": 6, "p_monotone": 0.5, "p_blur": 0.0, "blur_mm": 1.2,
            "p_geometry": 0.0, "zoom": 0.2, "rotate_deg": 10.0, "shift_mm": 10.0,
            "p_noise": 0.0, "noise_std": 0.05, "p_sharpen": 0.0, "sharpen": 4.0, "sharpen_mm": 1.0,
            "p_blur_axes": 0.0,
            "p_texture": 0.0, "texture_smooth_mm": 1.0, "texture_mm": 1.5, "texture_amp": 0.2,
        }
    )
    # fmt: on
    label_maps: tuple[str, ...] = ()
    heads_per_map: int = 3
    precision: str = "fp32"
    motion: str = "pool"

    def __post_init__(self) -> None:
        if self.detail_norm != "none" and not self.detail:
            raise ValueError(f"detail_norm {self.detail_norm!r} needs detail=True")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        if self.motion not in MOTION_MODES:
            raise ValueError(
                f"motion must be one of {', '.join(MOTION_MODES)}, not {self.motion!r}"
            )
        if self.crop is not None:
            crop = tuple(int(c) for c in self.crop)
            if len(crop) != 3 or any(c > s for c, s in zip(crop, self.shape, strict=True)):
                raise ValueError(
                    f"crop {crop} does not fit in the encoder grid {tuple(self.shape)}"
                )
            encoder_shape([c // self.unshuffle for c in crop])  # must survive five poolings
            object.__setattr__(self, "crop", crop)

    @property
    def detail_mm(self) -> float | None:
        """The fine grid of the detail channels (the simulation grid), or ``None`` without them."""
        return float(self.sim_spacing_mm) if self.detail else None

    @property
    def in_channels(self) -> int:
        """The encoder's input channels: the head, and the detail channels when on."""
        return 1 + (N_DETAIL if self.detail else 0)

    def replace(self, **changes: object) -> RecipeConfig:
        """Return a copy with some knobs changed."""
        data = asdict(self) | changes
        return RecipeConfig(**data)

    def as_dict(self) -> dict[str, object]:
        """Return the knobs as plain JSON types."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    def checkpoint_key(self) -> str:
        """The knobs a training checkpoint must match to be resumed (JSON).

        The source knobs enter only when they draw anything
        (:func:`motionqc.synthetic.pool.source_augment_on`), as in the pool's key, and
        ``motion`` only when it is not ``"pool"``, ``crop`` only when set, ``detail`` only when
        on: a run checkpointed
        before they existed resumes.
        """
        knobs = self.as_dict()
        if not source_augment_on(self.source_augment):
            knobs.pop("source_augment")
        if self.motion == "pool":  # as before the knob existed
            knobs.pop("motion")
        if self.crop is None:  # as before the knob existed
            knobs.pop("crop")
        if self.unshuffle == 1:  # as before the knob existed
            knobs.pop("unshuffle")
        if not self.detail:  # as before the knob existed
            knobs.pop("detail")
        if self.detail_norm == "none":  # as before the knob existed
            knobs.pop("detail_norm")
        if not self.label_maps:  # as before the knobs existed
            knobs.pop("label_maps")
            knobs.pop("heads_per_map")
        if self.precision == "fp32":  # as before the knob existed
            knobs.pop("precision")
        return json.dumps(knobs, sort_keys=True)


RECIPES: dict[str, RecipeConfig] = {
    "release": RecipeConfig(),
    "sample": RecipeConfig(name="sample", pool_size=1200, val_size=64, steps=2000),
    # the corpus's real heads (train_heads, val_heads and label_maps come from its split:
    # motionqc.training.release --recipe corpus), a half-width SFCN on the 2 mm grid
    "corpus": RecipeConfig(
        name="corpus",
        pseudo_subjects=1,
        spacing_mm=2.0,
        shape=(80, 96, 80),
        channels=(16, 32, 64, 128, 128, 64),
        pool_size=2400,
        val_size=96,
        steps=3600,
        eval_every=400,
        precision="bf16",
        source_augment=dict(RecipeConfig().source_augment, p_remap=0.5, p_noise=0.3),
    ),
    "smoke": RecipeConfig(
        name="smoke",
        pseudo_subjects=2,
        sim_spacing_mm=4.0,
        sim_shape=(40, 48, 40),
        channels=(16, 32, 64, 128, 128, 64),
        pool_size=12,
        val_size=4,
        steps=4,
        batch_size=4,
        eval_every=2,
    ),
}


# ------------------------------------------------------------------------------- training
def lr_at(step: int, steps: int, peak: float, pct_start: float) -> float:
    """One-cycle learning rate: cosine warm-up from peak/25 to peak, cosine decay to peak/1e4."""
    warm = max(1, int(round(steps * pct_start)))
    if step < warm:
        t = step / warm
        return peak / 25 + (peak - peak / 25) * (1 - math.cos(math.pi * t)) / 2
    t = min(1.0, (step - warm) / max(1, steps - warm))
    return peak / 1e4 + (peak - peak / 1e4) * (1 + math.cos(math.pi * t)) / 2


def val_inputs(val_x: torch.Tensor, config: RecipeConfig) -> torch.Tensor:
    """The validation samples with their own fixed intensity draws (the same at every pass)."""
    items = []
    for i in range(len(val_x)):
        gen = torch.Generator().manual_seed(int(config.seed) * 1_000_003 + 17 + i)
        items.append(
            augment_batch(val_x[i : i + 1], gen, config.augment, spacing_mm=config.spacing_mm)
        )
    return torch.cat(items)


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Log-probabilities of already scaled inputs, in eval mode, batch by batch, on the CPU.

    The batches go to the device the model is on; the outputs come back to the CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        outs.append(model(xb.contiguous(memory_format=torch.channels_last_3d)).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def train(
    model: torch.nn.Module,
    pool: tuple[torch.Tensor, torch.Tensor] | MotionBatches,
    val: tuple[torch.Tensor, torch.Tensor],
    config: RecipeConfig,
    run_dir: str | Path | None = None,
    *,
    log: bool = True,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Train the encoder for ``config.steps`` steps (resumable from ``run_dir/last.pt``).

    Each step draws ``batch_size`` pool samples (seeded by the step), or new samples from a
    :class:`MotionBatches`, then new geometry and intensities for them (:func:`geometry_batch`,
    :func:`augment_batch`) and, with ``config.crop``, one random crop each (:func:`crop_batch`;
    validation scores the whole grid); the loss is the soft-label KL divergence; every ``eval_every`` steps
    the validation samples are scored and a checkpoint is written. A checkpoint holds plain types
    only and is read back with ``weights_only=True``; one written with other settings is refused.

    Under ``torchrun --nproc_per_node=N`` (or an initialised process group) the model is wrapped
    in ``DistributedDataParallel``: every rank draws the step's global batch of ``batch_size``
    samples with the same seeds and trains on its ``batch_size / N`` share (its motion simulated
    on its own device), with its own geometry and intensity draws (seeded by step and rank: the
    same seed and ``N`` give the same numbers); BatchNorm uses each rank's share. Rank 0
    validates, logs (the training loss over every rank's share) and writes the checkpoint, and
    checks at every validation pass that the ranks' weights are still equal. Every rank reads
    ``run_dir/last.pt`` to resume, so ``run_dir`` must be shared (one node, or a shared file
    system), and only a run of the same number of processes resumes. Each rank draws its own
    dropout masks. An exception on one rank leaves the others waiting in their next collective
    until the process group's timeout (torchrun then ends them).

    Args:
        model: An SFCN with ``n_outputs`` bins.
        pool: Training images ``(N, 1, X, Y, Z)`` and labels ``(N,)`` (``motion="pool"``), or
            the :class:`MotionBatches` of the training sources (``motion="batch"``).
        val: Validation images and labels.
        config: The recipe.
        run_dir: Folder of ``last.pt`` and ``history.csv`` (``None``: no checkpoints).
        log: Print one line per validation pass.
        device: Where the model trains (``cuda``: each batch is drawn and augmented on the CPU,
            with the same seeds, then copied over; under DDP ``cuda:LOCAL_RANK``).

    Returns:
        One row per validation pass: ``step``, ``lr``, ``train_loss``, ``val_loss``, ``val_r2``,
        ``val_mae``, ``seconds``.

    Raises:
        ValueError: If ``run_dir`` holds a checkpoint of another recipe, ``pool`` does not match
            ``config.motion``, or the global batch does not divide among the DDP ranks.
    """
    if isinstance(pool, MotionBatches) != (config.motion == "batch"):
        wants = "a MotionBatches" if config.motion == "batch" else "pool tensors"
        raise ValueError(f"a recipe with motion={config.motion!r} trains on {wants}")
    val_x, val_y = val
    loss_fn = SoftLabelKL()
    device = torch.device(device)
    rank, world, local_rank = distributed_info()
    owns_group = False
    if world > 1:
        if config.batch_size % world:
            raise ValueError(
                f"batch_size {config.batch_size} is the global batch and must be divisible by "
                f"the {world} DDP processes"
            )
        device = training_device(str(device), local_rank, distributed=True)  # cuda: LOCAL_RANK
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owns_group = True
        if isinstance(pool, MotionBatches):
            pool.device = device
    share = slice(rank * (config.batch_size // world), (rank + 1) * (config.batch_size // world))
    model.to(device=device, memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start, elapsed = 0, 0.0
    last = Path(run_dir) / "last.pt" if run_dir is not None else None
    if last is not None and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state.get("config") != config.checkpoint_key():
            raise ValueError(f"{last}: a checkpoint of other recipe settings; remove {run_dir}")
        if int(state.get("world_size", 1)) != world:
            raise ValueError(
                f"{last}: written by {state.get('world_size', 1)} process(es), resumed by "
                f"{world}: the draws of each rank would change; resume with the same number"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["seconds"])
        history = json.loads(state["history"])
    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # each rank its own dropout masks (the weights are rank 0's, broadcast by DDP)
        torch.manual_seed(
            int(np.random.SeedSequence([int(config.seed), 13, rank]).generate_state(1)[0])
        )
    vx = val_inputs(val_x, config) if len(val_x) else val_x
    running: list[float] = []
    t0 = time.perf_counter() - elapsed
    for step in range(start, config.steps):
        seq = np.random.SeedSequence([int(config.seed), 7, step])
        own = seq if world == 1 else np.random.SeedSequence([int(config.seed), 7, step, rank])
        gen = torch.Generator().manual_seed(int(own.generate_state(1)[0]))
        if isinstance(pool, MotionBatches):
            xb, yb = pool.batch(step, share)
        else:
            idx = np.random.default_rng(seq).choice(len(pool[0]), config.batch_size, replace=False)
            xb, yb = pool[0][idx[share]], pool[1][idx[share]]
        x, y = geometry_batch(xb, yb, gen, config.augment, spacing_mm=config.spacing_mm)
        x = augment_batch(x, gen, config.augment, spacing_mm=config.spacing_mm)
        if config.crop is not None:
            x = crop_batch(x, config.crop, gen)
        x = x.to(device).contiguous(memory_format=torch.channels_last_3d)
        y = y.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.pct_start)
        model.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=config.precision == "bf16"):
            out = net(x)
        loss = loss_fn(out.float(), y.float())
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            if world > 1:
                _check_in_sync(model)
                running = [v for part in _all_gathered(running) for v in part]  # every share
                if rank != 0:
                    running = []
                    continue
            out = predict_logits(model, vx)
            pred = decode(out, BIN_RANGE).numpy().astype(np.float64)
            truth = val_y.numpy().astype(np.float64)
            ss = float(((truth - truth.mean()) ** 2).sum()) or 1.0
            row = {
                "step": done,
                "lr": lr_at(step, config.steps, config.lr, config.pct_start),
                "train_loss": float(np.mean(running)),
                "val_loss": float(loss_fn(out, val_y.float())),
                "val_r2": 1 - float(((pred - truth) ** 2).sum()) / ss,
                "val_mae": float(np.abs(pred - truth).mean()),
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            running = []
            if log:
                print(" ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
            if last is not None:
                last.parent.mkdir(parents=True, exist_ok=True)
                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": done,
                    "seconds": row["seconds"],
                    "history": json.dumps(history),
                    "config": config.checkpoint_key(),
                    "world_size": world,
                }
                tmp = last.with_name(last.name + ".tmp")
                torch.save(state, tmp)
                os.replace(tmp, last)
                pd.DataFrame(history).to_csv(last.parent / "history.csv", index=False)
    model.eval()
    if world > 1:  # every rank returns rank 0's model (its BatchNorm statistics) and history
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
        shared = [history]
        torch.distributed.broadcast_object_list(shared, src=0)
        history = shared[0]
        if owns_group:
            torch.distributed.destroy_process_group()
    return pd.DataFrame(history)


def _all_gathered(value: object) -> list[object]:
    """Every rank's ``value``, in rank order (a collective: all ranks call it)."""
    out: list[object] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def _check_in_sync(model: torch.nn.Module) -> None:
    """Raise on every rank if the DDP ranks' weights differ (a collective: all ranks call it)."""
    totals = _all_gathered(float(sum(p.detach().double().sum() for p in model.parameters())))
    if len(set(totals)) > 1:
        raise RuntimeError(f"the DDP ranks' weights differ (parameter sums {totals})")
