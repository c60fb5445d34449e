"""The GPU check (``bash benchmarks/gpu_check.sh``): motion, training, the paper path, scoring.

Runs where only PyTorch (with numpy, scipy, pandas) is installed — the GPU machine this project
can borrow has neither TorchIO, nibabel nor SimpleITK, and no network — on the inputs
``benchmarks/gpu_prepare.py`` wrote here (``build/gpu_check/inputs.pt``). It imports only
torch-only modules of the package (:mod:`motionqc.physics.motion`'s torch backend,
:mod:`motionqc.physics.device`, :mod:`motionqc.models.sfcn`, :mod:`motionqc.models.soft_labels`,
:mod:`motionqc.runtime.resources`) and measures, in one run:

- (a) ``simulate_motion`` on the device at 1 mm, batches 1/8/32 (vol/s), against the torch path
  on this machine's CPU cores; and the device's output against the CPU SimpleITK path's (relative
  L2 at 2 mm, rows prepared on the CPU machine);
- (b) an SFCN training step at 1 mm in bf16 autocast + channels-last, batches 4/8 (vol/s,
  ``torch.cuda.max_memory_allocated``);
- (c) notebook 03's paper path: steps of SFCN training on the bundled heads with the motion and
  intensity chain applied per batch on the device (:class:`motionqc.physics.device.DeviceMotion`),
  the flip on the device too; loss at the start and end, vol/s, memory, NVML power where present,
  and the CPU loader's cost per volume (elastic deformation, measured at preparation) beside it;
- (d) scoring: the encoder's forward pass at 1 mm in bf16 + channels-last, batches 8/32, inputs
  copied from pinned host memory each batch (vol/s).

Writes ``bench_gpu.csv`` (``section, setting, batch, value, unit, note``) into ``--out``.

    PYTHONPATH=src python benchmarks/gpu_check.py --inputs build/gpu_check/inputs.pt --out DIR
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from motionqc.models.sfcn import SFCN
from motionqc.models.soft_labels import SoftLabelKL
from motionqc.physics.device import DeviceMotion
from motionqc.physics.motion import simulate_motion
from motionqc.runtime.resources import ResourceMonitor

FIELDS = ("section", "setting", "batch", "value", "unit", "note")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls (the device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _heads(inputs: dict, device: torch.device, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prepared heads on ``device`` (float32), averaged ``scale``³ to a coarser grid if > 1."""
    heads = inputs["heads"].float()
    affines = inputs["affines"].clone()
    if scale > 1:
        heads = F.avg_pool3d(heads[:, None], scale)[:, 0]
        affines[:, :3, :3] *= scale
    return heads.to(device), affines


def _batch(inputs: dict, rows: list[int], heads: torch.Tensor, affines: torch.Tensor) -> dict:
    """A :class:`DeviceMotion` batch for ``rows``: each row's head (flipped on the device)."""
    index = inputs["head_index"][rows]
    images = heads[index.to(heads.device)]
    flip = inputs["flip"][rows].to(heads.device)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(1), images)
    batch = {k: inputs[k][rows] for k in ("n", "degrees", "translation", "times", "gamma")}
    batch.update({k: inputs[k][rows] for k in ("bias", "rescale_max")})
    batch = {k: v.to(heads.device) for k, v in batch.items()}
    batch["image"] = images[:, None]
    batch["affine"] = affines[index].to(heads.device)
    return batch


def motion_section(inputs: dict, device: torch.device, scale: int, batches: list[int]) -> list:
    """(a): motion throughput on the device and on this CPU, and the device against SimpleITK."""
    out = []
    heads, affines = _heads(inputs, device, scale)
    n = inputs["n"]
    common = int(torch.mode(n[n > 0]).values)  # one number of transforms: one batched call
    rows = torch.nonzero(n == common).flatten().tolist()
    for b in batches:
        pick = [rows[i % len(rows)] for i in range(b)]
        batch = _batch(inputs, pick, heads, affines)
        args = (
            batch["image"][:, 0],
            batch["degrees"][:, :common].cpu(),
            batch["translation"][:, :common].cpu(),
            batch["times"][:, :common].cpu(),
            batch["affine"].cpu(),
        )
        sec = timed(lambda a=args: simulate_motion(*a, backend="torch"), device, reps=3)
        note = f"{common} transforms, grid {list(heads.shape[1:])}"
        out.append(("motion", f"{device.type} torch", b, b / sec, "vol/s", note))
        if b == batches[0] and device.type != "cpu":
            cpu_args = (args[0].cpu(), *args[1:])
            cpu = timed(
                lambda a=cpu_args: simulate_motion(*a, backend="torch"), torch.device("cpu"), 1
            )
            out.append(
                (
                    "motion",
                    f"cpu torch ({torch.get_num_threads()} threads)",
                    b,
                    b / cpu,
                    "vol/s",
                    note,
                )
            )
            out.append(("motion", "device / cpu", b, cpu / sec, "x", "same batch, same run"))
    ref = inputs["reference"]
    for k in range(len(ref["rows"])):
        row = int(ref["rows"][k])
        m = int(n[row])
        got = simulate_motion(
            ref["inputs"][k].to(device),
            inputs["degrees"][row, :m],
            inputs["translation"][row, :m],
            inputs["times"][row, :m],
            ref["affines"][k],
            backend="torch",
        ).cpu()
        want = ref["outputs"][k]
        rel = float((got - want).norm() / want.norm())
        out.append(
            ("motion", f"{device.type} vs cpu sitk (row {row})", 1, rel, "relative L2", "2 mm")
        )
    return out


def _train_steps(
    model: torch.nn.Module,
    make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    device: torch.device,
    bf16: bool,
    budget_s: float,
) -> tuple[list[float], float, int]:
    """Run SFCN training steps; returns the losses, the seconds after the first step, steps run."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = SoftLabelKL()
    losses: list[float] = []
    t0 = None
    done = 0
    for step in range(steps):
        x, y = make_batch(step)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done += 1
        if step == 0:
            _sync(device)
            t0 = time.perf_counter()  # the first step (allocation, autotuning) is not timed
        elif time.perf_counter() - t0 > budget_s:
            break
    _sync(device)
    return losses, time.perf_counter() - t0 if t0 is not None else math.nan, done


def training_section(
    inputs: dict, device: torch.device, scale: int, batches: list[int], steps: int
) -> list:
    """(b): SFCN training steps at the heads' grid, bf16 + channels-last."""
    out = []
    heads, _ = _heads(inputs, device, scale)
    bf16 = device.type == "cuda"
    for b in batches:
        torch.manual_seed(0)
        model = SFCN().to(device).to(memory_format=torch.channels_last_3d)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        x = heads[[i % len(heads) for i in range(b)]][:, None]
        y = inputs["label"][:b].to(device)
        _, sec, done = _train_steps(
            model, lambda _s, x=x, y=y: (x, y), steps, device, bf16, budget_s=60
        )
        rate = b * (done - 1) / sec if done > 1 else math.nan
        precision = "bf16" if bf16 else "fp32"
        out.append(("train step", f"SFCN {precision} channels-last", b, rate, "vol/s", ""))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            out.append(("train step", "max_memory_allocated", b, peak, "GiB", ""))
        del model
    return out


def paper_path_section(
    inputs: dict, device: torch.device, scale: int, batch: int, steps: int, budget_s: float
) -> list:
    """(c): notebook 03's paper path: motion + intensities per batch on the device, SFCN steps."""
    heads, affines = _heads(inputs, device, scale)
    transform = DeviceMotion(backend="torch")
    total = len(inputs["n"])
    gen = torch.Generator().manual_seed(0)

    def make_batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(total, (batch,), generator=gen).tolist()
        x = transform(_batch(inputs, rows, heads, affines))
        return x, inputs["label"][rows].to(device)

    torch.manual_seed(0)
    model = SFCN().to(device).to(memory_format=torch.channels_last_3d)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with ResourceMonitor(None, device=device, profile="gpu-check", label="paper path") as mon:
        losses, sec, done = _train_steps(
            model, make_batch, steps, device, device.type == "cuda", budget_s
        )
    record = mon.record or {}
    rate = batch * (done - 1) / sec if done > 1 else math.nan
    k = max(1, min(25, done // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    loader = json.loads(inputs["meta"]).get("loader_s_per_volume_one_core")
    out = [
        ("paper path", "DeviceMotion + SFCN step", batch, rate, "vol/s", f"{done} steps"),
        ("paper path", f"loss, mean of first {k} steps", batch, first, "KL", ""),
        ("paper path", f"loss, mean of last {k} steps", batch, last, "KL", ""),
    ]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        out.append(("paper path", "max_memory_allocated", batch, peak, "GiB", ""))
    if record.get("mean_power_w") is not None:
        out.append(
            ("paper path", "mean board power (NVML)", batch, record["mean_power_w"], "W", "")
        )
        out.append(("paper path", "max board power (NVML)", batch, record["max_power_w"], "W", ""))
    if loader:
        note = "elastic deformation + flip per 1 mm volume, measured where gpu_prepare.py ran"
        out.append(("paper path", "CPU loader, one core", 1, 1 / loader, "vol/s", note))
        out.append(("paper path", "loader cores to keep up", batch, rate * loader, "cores", note))
    return out


def scoring_section(inputs: dict, device: torch.device, scale: int, batches: list[int]) -> list:
    """(d): the encoder's forward pass as ``motionqc score`` runs it, inputs copied per batch."""
    out = []
    heads, _ = _heads(inputs, torch.device("cpu"), scale)
    torch.manual_seed(0)
    model = SFCN().to(device).eval().to(memory_format=torch.channels_last_3d)
    bf16 = device.type == "cuda"
    for b in batches:
        host = heads[[i % len(heads) for i in range(b)]][:, None].contiguous()
        if device.type == "cuda":
            host = host.pin_memory()

        @torch.inference_mode()
        def forward(h: torch.Tensor = host) -> torch.Tensor:
            x = h.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return model(x)

        sec = timed(forward, device, reps=5)
        precision = "bf16" if bf16 else "fp32"
        out.append(
            ("scoring", f"forward {precision} channels-last + copy", b, b / sec, "vol/s", "")
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line (``benchmarks/gpu_check.sh`` passes the defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=Path, default=Path("build/gpu_check/inputs.pt"))
    parser.add_argument("--out", type=Path, default=Path("figures/tables"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=int, default=1, help="average the heads by this factor")
    parser.add_argument("--motion-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--paper-steps", type=int, default=300)
    parser.add_argument("--paper-batch", type=int, default=8)
    parser.add_argument("--paper-budget-s", type=float, default=150.0)
    parser.add_argument("--score-batches", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here (--device cpu runs the check's code on the CPU)")
    inputs = torch.load(args.inputs, map_location="cpu", weights_only=True)
    rows = [
        (
            "machine",
            torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            0,
            math.nan,
            "",
            f"torch {torch.__version__}",
        )
    ]
    sections = [
        lambda: motion_section(inputs, device, args.scale, args.motion_batches),
        lambda: training_section(inputs, device, args.scale, args.train_batches, args.train_steps),
        lambda: paper_path_section(
            inputs, device, args.scale, args.paper_batch, args.paper_steps, args.paper_budget_s
        ),
        lambda: scoring_section(inputs, device, args.scale, args.score_batches),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_gpu.csv"
    printed = 0
    for section in sections:
        rows.extend(section())
        with open(path, "w", newline="") as handle:  # written after every section
            writer = csv.writer(handle)
            writer.writerow(FIELDS)
            writer.writerows(rows)
        for row in rows[printed:]:
            print(
                " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row), flush=True
            )
        printed = len(rows)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
