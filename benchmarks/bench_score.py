"""Benchmark: scoring throughput (load + preprocess + forward) on CPU, plain fp32 eval vs the pipeline.

Two models are measured, each in a section of its own with its own reference row (every ratio
is against the reference of its section, in the same run):

- ``released``: **the encoder that ships** (``motionqc.models.encoder.released_encoder_path()``, or
  ``--encoder FILE``), its trained weights at its own grid, width and input scaling, all read from
  the file (``load_encoder``): what ``motionqc score`` runs by default;
- ``random``: a randomly initialised full-width SFCN at ``--spacing``/``--shape`` (default 1 mm,
  160x192x160: the paper grid, where the forward pass dominates; weights do not change the cost).

In each section both sides score the same volumes with the same weights, in the same process and
environment:

- reference: plain fp32 eval, one volume after the other: ``motionqc.data.detail.encoder_input``
  (``motionqc.data.volumes.preprocess``: load, resample, crop/pad, mean scaling), the encoder's
  input scaling, the model's forward pass (contiguous memory, torch's default threads), its
  temperature, batch 1;
- pipeline: ``motionqc.app.scorer.score_volumes`` with ``motionqc score``'s CPU defaults:
  channels-last-3d, resampling skipped when a volume is already on the target grid, the batch size,
  loader workers and threads of ``default_batch_size``/``default_num_workers``/``default_threads``
  (on 2 cores: batches of 1, no worker, 2 threads) and ``--precision auto`` (bf16 autocast on CPUs
  with native bf16, fp32 elsewhere). Mosaics are off (they are not part of the scoring throughput).

A ``forward-only`` row runs the pipeline's model settings (channels-last, precision, threads, batch)
on the same volumes already loaded and preprocessed in memory: the model's own throughput, so the
pipeline's share of it (goal >= 0.9) is measured in the same run.

Ablation rows change one default at a time: contiguous memory, batch 2, one loader worker, and
bf16 autocast (only on CPUs with native bf16: emulated bf16 is 30-70x slower than fp32).

The inputs are the sample heads as distributed (ROBEX atlas 1.5 mm, Colin27 and MNI152 2009 at
1 mm), cycled to ``--n-volumes`` files. The accuracy of the pipeline's model settings
(channels-last, its precision) against plain fp32 eval is checked per section on the sample heads
and motion-corrupted copies of them (0.5-3 mm): in ``released`` on the released encoder itself; in
``random`` on the trained encoder at ``checkpoints/sample/encoder.pt`` when present (at its own
geometry), else on a random SFCN with BatchNorm statistics calibrated on the inputs at the sample
geometry (the output says which). The script re-executes itself with glibc malloc settings that
keep freed memory for reuse (``motionqc.runtime.allocator``, as ``motionqc score`` applies them)
unless they are already set, so both sides run under the same setting.

Writes figures/tables/bench_score.csv (``--out``) and prints the table.

    .venv/bin/python benchmarks/bench_score.py [--n-volumes 24] [--quick] [--workers N]
    .venv/bin/python benchmarks/bench_score.py --models released --encoder my_encoder.pt
    MOTIONQC_BENCH_N=4 .venv/bin/python benchmarks/bench_score.py --no-ablation
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

from motionqc.runtime.allocator import restart_with_env

restart_with_env()  # glibc reads the malloc settings at start-up: before numpy/torch allocate

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from motionqc import paths  # noqa: E402
from motionqc.app.scorer import Scorer, score_volumes  # noqa: E402
from motionqc.data.detail import encoder_input  # noqa: E402
from motionqc.data.volumes import preprocess, sample_manifest  # noqa: E402
from motionqc.models.encoder import (  # noqa: E402
    load_encoder,
    released_encoder_path,
    save_encoder,
    scale_input,
    unit_range,
)
from motionqc.models.sfcn import SFCN  # noqa: E402
from motionqc.models.soft_labels import decode  # noqa: E402
from motionqc.physics.motion import simulate_motion  # noqa: E402
from motionqc.profiles import get_profile  # noqa: E402
from motionqc.runtime.devices import (  # noqa: E402
    cpu_has_native_bf16,
    default_batch_size,
    default_num_workers,
    default_threads,
    resolve_precision,
    usable_cores,
)
from motionqc.synthetic.parameters import sample_motion  # noqa: E402

GOAL_VOL_PER_MIN = 40.0  # at 1 mm
GOAL_MAX_DIFF_MM = 0.05
GOAL_SHARE = 0.9
MODELS = ("released", "random")


def _grid(meta: dict) -> str:
    return f"{meta['spacing_mm']:g} mm {'x'.join(map(str, meta['shape']))}"


def reference_run(model: SFCN, meta: dict, files: list[str]) -> tuple[float, np.ndarray]:
    """Plain fp32 eval, one volume at a time: preprocess, the encoder's input scaling, forward,
    its temperature (as its file says)."""
    scores = []
    start = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            x = encoder_input(path, meta["spacing_mm"], meta["shape"], meta["detail_mm"])[None]
            out = model(scale_input(x, meta["input_intensity"])).float() / meta["temperature"]
            scores.append(float(decode(out, meta["bin_range"])[0]))
    return time.perf_counter() - start, np.asarray(scores)


def pipeline_run(
    scorer: Scorer, files: list[str], workers: int, batch: int
) -> tuple[float, np.ndarray]:
    """The ``motionqc score`` pipeline: returns (seconds, scores)."""
    start = time.perf_counter()
    rows = list(score_volumes(scorer, files, batch_size=batch, num_workers=workers))
    seconds = time.perf_counter() - start
    bad = [r["error"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"pipeline failed on a volume: {bad[0]}")
    return seconds, np.asarray([r["motion_mm"] for r in rows])


def forward_only_run(scorer: Scorer, files: list[str], batch: int) -> tuple[float, np.ndarray]:
    """The pipeline's model settings on volumes preprocessed beforehand (load time excluded)."""
    meta = scorer.meta
    x = torch.stack(
        [encoder_input(f, meta["spacing_mm"], meta["shape"], meta["detail_mm"]) for f in files]
    )
    start = time.perf_counter()
    scores = [scorer.predict(x[i : i + batch])["motion_mm"] for i in range(0, len(x), batch)]
    return time.perf_counter() - start, np.concatenate(scores)


def warm_up(model: SFCN, shape: tuple[int, ...]) -> None:
    """One forward per configuration (layout, precision, batch 1 and 2) so that oneDNN primitive
    creation is not timed; bf16 only on CPUs with native bf16 (no bf16 row runs elsewhere)."""
    dtypes = (None, torch.bfloat16) if cpu_has_native_bf16() else (None,)
    channels = int(model.in_channels)
    with torch.inference_mode():
        model(torch.rand(1, channels, *shape))
        model.to(memory_format=torch.channels_last_3d)
        for batch in (1, 2):
            x = torch.rand(batch, channels, *shape).contiguous(memory_format=torch.channels_last_3d)
            for dtype in dtypes:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                    model(x)
        model.to(memory_format=torch.contiguous_format)


def _inputs(heads: list[str], spacing: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The sample heads and motion-corrupted copies (0.5-3 mm), preprocessed."""
    images = []
    for k, head in enumerate(heads):
        base = preprocess(head, spacing, shape, normalise=False)
        images.append(base.data / base.data.mean())
        for j, target in enumerate((0.5, 1.0, 2.0, 3.0)):
            motion = sample_motion(target, seed=100 * k + j, affine=base.affine, shape=shape)
            moved = simulate_motion(
                base.data[0], motion["degrees"], motion["translation"], motion["times"], base.affine
            )[None]
            images.append(moved / moved.mean())
    return torch.stack(images).float()


def _calibrated_random_encoder(x: torch.Tensor, path: Path, spacing: float) -> Path:
    """A random SFCN whose BatchNorm statistics are those of ``x``: its outputs vary with the input
    (an uncalibrated random SFCN predicts the same near-uniform distribution for every volume,
    which would make the bf16 comparison vacuous)."""
    torch.manual_seed(0)
    model = SFCN()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = None  # cumulative average over the calibration passes
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 4):
            model(unit_range(x[i : i + 4]))  # the inputs the scorer feeds it
    model.eval()
    return save_encoder(path, model, spacing_mm=spacing, shape=tuple(x.shape[2:]))


def accuracy_check(
    heads: list[str], tmp: Path, precision: str, encoder: Path | None = None
) -> dict[str, object]:
    """Max |score of plain fp32 eval - score of the pipeline's model settings| (channels-last and
    ``precision``) over the sample heads and motion-corrupted copies of them.

    ``encoder``: the trained encoder to check (at its own geometry); ``None``: notebook 03's
    ``checkpoints/sample/encoder.pt`` when present, else a calibrated random SFCN."""
    trained = paths.checkpoints_dir() / "sample" / "encoder.pt"
    if encoder is None and trained.is_file():
        encoder = trained
    if encoder is not None:
        meta = load_encoder(encoder)[1]
        if meta["detail_mm"] is not None:
            return {"accuracy_model": f"{encoder}: detail channels, not checked"}
        try:
            note = f"trained encoder {Path(encoder).resolve().relative_to(paths.repo_root())}"
        except ValueError:
            note = f"trained encoder {encoder}"
        x = _inputs(heads, meta["spacing_mm"], meta["shape"])
    else:
        sample = get_profile("sample")
        x = _inputs(heads, sample.spacing_mm, sample.shape)
        encoder = _calibrated_random_encoder(x, tmp / "calibrated.pt", sample.spacing_mm)
        note = (
            "RANDOM-INIT SFCN, BatchNorm calibrated on the inputs (no checkpoints/sample/"
            "encoder.pt: run notebook 03 for the real check)"
        )
    ref = Scorer(encoder, device="cpu", precision="fp32", channels_last=False)
    ours = Scorer(encoder, device="cpu", precision=precision, channels_last=True)
    a = np.concatenate([ref.predict(x[i : i + 4])["motion_mm"] for i in range(0, len(x), 4)])
    b = np.concatenate([ours.predict(x[i : i + 4])["motion_mm"] for i in range(0, len(x), 4)])
    return {
        "accuracy_model": note,
        "accuracy_geometry": _grid(ref.meta),
        "accuracy_n": len(x),
        "accuracy_score_range": f"{a.min():.2f}-{a.max():.2f}",
        "accuracy_precision": precision,
        "max_abs_diff_pipeline_mm": float(np.abs(a - b).max()),
    }


def _configs(args: argparse.Namespace, precision: str) -> tuple[list, list[str]]:
    """(label, config) per row; config None: the reference; ("forward", ...): forward-only."""
    configs: list = [("reference: plain fp32 eval", None)]
    configs.append(
        (
            f"pipeline: channels-last, {precision}, {args.workers} worker(s), batch {args.batch_size}",
            (precision, True, args.workers, args.batch_size),
        )
    )
    configs.append(
        (
            "forward-only: preloaded tensors, pipeline's model",
            ("forward", precision, True, args.workers, args.batch_size),
        )
    )
    skipped = []
    if args.ablation:
        configs.append(
            ("  ablation: contiguous memory", (precision, False, args.workers, args.batch_size))
        )
        configs.append(("  ablation: batch 2", (precision, True, args.workers, 2)))
        other = 0 if args.workers else 1
        configs.append(
            (f"  ablation: {other} loader worker(s)", (precision, True, other, args.batch_size))
        )
        if precision == "fp32" and cpu_has_native_bf16():
            configs.append(
                ("  ablation: bf16 autocast", ("bf16", True, args.workers, args.batch_size))
            )
        elif precision == "fp32":
            skipped.append("bf16 autocast: this CPU has no native bf16 (emulated: 30-70x slower)")
        else:
            configs.append(("  ablation: fp32", ("fp32", True, args.workers, args.batch_size)))
    return configs, skipped


def measure(
    section: str, encoder: Path, files: list[str], args: argparse.Namespace, precision: str
) -> pd.DataFrame:
    """Every row of one section: one encoder file, its own reference row and ratios."""
    model, meta = load_encoder(encoder)
    shape = tuple(meta["shape"])
    threads = args.threads or default_threads(torch.device("cpu"))
    warm_up(model, shape)
    default_threads_n = torch.get_num_threads()
    configs, skipped = _configs(args, precision)
    print(f"== {section}: {encoder} ({_grid(meta)}, channels {list(model.channels)})", flush=True)
    rows, reference = [], None
    for label, config in configs:
        torch.set_num_threads(default_threads_n)
        if config is None:
            seconds, scores = reference_run(model, meta, files)
            reference = scores
            row = {"workers": 0, "threads": default_threads_n, "batch": 1}
            row.update({"precision": "fp32", "channels_last": False})
        else:
            forward = config[0] == "forward"
            precision_k, channels_last, workers, batch = config[1:] if forward else config
            scorer = Scorer(
                encoder,
                device="cpu",
                precision=precision_k,
                channels_last=channels_last,
                threads=threads,
            )
            if forward:
                seconds, scores = forward_only_run(scorer, files, batch)
                workers = 0
            else:
                seconds, scores = pipeline_run(scorer, files, workers, batch)
            row = {"workers": workers, "threads": threads, "batch": batch}
            row.update({"precision": precision_k, "channels_last": channels_last})
        row = {
            "section": section,
            "config": label,
            "n_volumes": len(files),
            "spacing_mm": meta["spacing_mm"],
            "shape": "x".join(map(str, shape)),
            "channels": "-".join(map(str, model.channels)),
            "seconds": seconds,
            "s_per_volume": seconds / len(files),
            "volumes_per_min": 60 * len(files) / seconds,
            **row,
            "max_abs_diff_vs_reference_mm": float(np.abs(scores - reference).max()),
        }
        rows.append(row)
        print(
            f"{label:45s} {row['seconds']:7.1f} s  {row['volumes_per_min']:6.1f} vol/min  "
            f"max |diff| vs fp32 {row['max_abs_diff_vs_reference_mm']:.4f} mm",
            flush=True,
        )
    for reason in skipped:
        print(f"  ablation skipped: {reason}", flush=True)
    torch.set_num_threads(default_threads_n)
    table = pd.DataFrame(rows)
    table["ratio_vs_reference"] = table["volumes_per_min"] / table["volumes_per_min"].iloc[0]
    table["encoder"] = str(encoder)
    table["encoder_sha256"] = hashlib.sha256(Path(encoder).read_bytes()).hexdigest()
    table["input_intensity"] = meta["input_intensity"]
    return table


def _summary(table: pd.DataFrame, precision: str) -> None:
    """The pipeline's throughput, its share of the model's own, and its accuracy, per section."""
    for section, part in table.groupby("section", sort=False):
        ours, forward_row = part.iloc[1], part.iloc[2]
        goal = f"; goal >= {GOAL_VOL_PER_MIN:g}" if float(ours["spacing_mm"]) == 1.0 else ""
        print(
            f"[{section}] pipeline: {ours['volumes_per_min']:.1f} volumes/min at "
            f"{ours['spacing_mm']:g} mm {ours['shape']} ({ours['ratio_vs_reference']:.2f}x plain "
            f"fp32 eval of the same model{goal})"
        )
        print(
            f"[{section}] pipeline / forward-only (the model's own throughput, same settings): "
            f"{ours['volumes_per_min'] / forward_row['volumes_per_min']:.2f} "
            f"(goal >= {GOAL_SHARE:g})"
        )
        if "max_abs_diff_pipeline_mm" in part and pd.notna(ours.get("max_abs_diff_pipeline_mm")):
            print(
                f"[{section}] pipeline ({precision}, channels-last) vs plain fp32 eval on "
                f"{ours['accuracy_model']} ({ours['accuracy_geometry']}, {ours['accuracy_n']} "
                f"volumes, scores {ours['accuracy_score_range']} mm): max |diff| "
                f"{ours['max_abs_diff_pipeline_mm']:.4f} mm (goal <= {GOAL_MAX_DIFF_MM:g})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n-volumes",
        type=int,
        default=int(os.environ.get("MOTIONQC_BENCH_N", 24)),
        help="volumes per configuration (env MOTIONQC_BENCH_N)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="4 volumes, no ablation rows, one head checked"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="released: the encoder that ships (its grid, width, weights); random: a random "
        "full-width SFCN at --spacing/--shape",
    )
    parser.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="encoder file of the 'released' section (default: the released encoder)",
    )
    parser.add_argument("--spacing", type=float, default=1.0, help="'random' voxel size, mm")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(160, 192, 160), help="'random' input grid"
    )
    parser.add_argument("--workers", type=int, default=default_num_workers("cpu"), help="loaders")
    parser.add_argument("--threads", type=int, default=0, help="pipeline threads (0: default)")
    parser.add_argument(
        "--batch-size", type=int, default=default_batch_size("cpu"), help="pipeline batch size"
    )
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto", help="pipeline precision"
    )
    parser.add_argument(
        "--no-ablation",
        dest="ablation",
        action="store_false",
        help="skip the rows that change one default at a time",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="CSV (default: figures/tables/bench_score.csv)"
    )
    args = parser.parse_args()
    quick = args.quick or bool(os.environ.get("MOTIONQC_BENCH_QUICK"))
    if quick:
        args.n_volumes, args.ablation = min(args.n_volumes, 4), False

    heads = sample_manifest(verify=False)["path"].tolist()
    files = [heads[i % len(heads)] for i in range(args.n_volumes)]
    tmp = Path(tempfile.mkdtemp(prefix="bench_score_"))
    precision = "bf16" if resolve_precision(args.precision, torch.device("cpu")) else "fp32"
    print(
        f"{args.n_volumes} volumes ({', '.join(Path(h).name for h in heads)}, cycled); "
        f"{usable_cores()} core(s), load avg {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    checked = heads[:1] if quick else heads
    tables = []
    for section in dict.fromkeys(args.models):  # in the order given, once each
        if section == "released":
            encoder = args.encoder or released_encoder_path()
            table = measure("released", encoder, files, args, precision)
            accuracy = accuracy_check(checked, tmp, precision, encoder=encoder)
            table["model"] = "released encoder (trained weights)"
        else:
            torch.manual_seed(0)
            encoder = save_encoder(
                tmp / "encoder.pt",
                SFCN(),
                spacing_mm=args.spacing,
                shape=tuple(args.shape),
                info={"note": "random init: throughput only"},
            )
            table = measure("random", encoder, files, args, precision)
            accuracy = accuracy_check(checked, tmp, precision)
            table["model"] = "random init (throughput)"
        for key, value in accuracy.items():
            table[key] = value
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    table["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    table["thp_mem_alloc"] = os.environ.get("THP_MEM_ALLOC_ENABLE")
    table["cpu_count"] = usable_cores()
    table["load_avg_1min"] = os.getloadavg()[0]
    table["torch"] = torch.__version__
    table["machine"] = platform.machine()
    out = args.out or paths.tables_dir() / "bench_score.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    cols = ["section", "config", "shape", "seconds", "volumes_per_min", "ratio_vs_reference"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    _summary(table, precision)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
