"""Benchmark: simulate_motion vs TorchIO's Motion, same volume, same process, same environment.

Times ``torchio.transforms.Motion`` (linear interpolation) and ``motionqc.physics.motion.simulate_motion``
on the MNI152 2009 sample head at 1 mm (182x218x182) and 2 mm (91x109x91), n in {2, 4, 8}
transforms, batches of 1 and 8 (TorchIO has no batch: it loops). Runs interleave the two
implementations and report the best of ``--repeats`` wall times; peak memory is the peak rise of
the process's maximum resident set during one call, measured in a fresh process. The script re-executes itself once with
glibc malloc settings that keep freed memory for reuse (``motionqc.runtime.allocator``) unless they are
already set, so both implementations always run under the same environment.

Writes figures/tables/bench_motion.csv and prints the table.

    .venv/bin/python benchmarks/bench_motion.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

from motionqc.runtime.allocator import restart_with_env

restart_with_env()  # glibc reads the malloc settings at start-up: before numpy/torch allocate

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torchio as tio  # noqa: E402

from motionqc import paths  # noqa: E402
from motionqc.data.volumes import preprocess, sample_manifest  # noqa: E402
from motionqc.physics.motion import simulate_motion  # noqa: E402

GRIDS = {1.0: (182, 218, 182), 2.0: (91, 109, 91)}


def rss() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_mb(kind: str, volume_file: str, n: int, batch: int, seed: int) -> float:
    """Peak memory of one call in a fresh process: peak rise of the resident set over the inputs."""
    code = f"""
import sys, threading, torch, torchio as tio
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from bench_motion import draw, run_torchio, run_ours, rss
data = torch.load({volume_file!r}, weights_only=True)
images = [tio.ScalarImage(tensor=data['data'] * (1 + 0.01 * i), affine=data['affine'].numpy())
          for i in range({batch})]
volumes = torch.cat([im.data for im in images])
deg, tra, times = draw({seed}, {n}, {batch})
base = peak = rss()
stop = threading.Event()
def sample():
    global peak
    while not stop.wait(0.001):
        peak = max(peak, rss())
thread = threading.Thread(target=sample, daemon=True)
thread.start()
if {kind!r} == 'torchio':
    run_torchio(images, deg, tra, times)
else:
    run_ours(volumes, data['affine'], deg, tra, times, torch.device('cpu'))
stop.set(); thread.join()
print((max(peak, rss()) - base) / 2**20)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def draw(seed: int, n: int, batch: int):
    rng = np.random.default_rng(seed)
    deg = rng.uniform(-3, 3, (batch, n, 3))
    tra = rng.uniform(-3, 3, (batch, n, 3))
    step = 1 / (n + 1)
    base = np.arange(1, n + 1) * step
    times = (base + rng.uniform(-0.3 * step, 0.3 * step, (batch, n))).astype(np.float32)
    return deg, tra, times


def run_torchio(images, deg, tra, times):
    out = []
    for i, image in enumerate(images):
        motion = tio.Motion(deg[i], tra[i], times[i], image_interpolation="linear")
        out.append(motion(image).data)
    return out


def run_ours(volumes, affine, deg, tra, times, device):
    out = simulate_motion(volumes.to(device), deg, tra, times, affine)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--repeats-batch", type=int, default=1, help="repeats for batch 8")
    parser.add_argument("--quick", action="store_true", help="2 mm only")
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the peak-memory runs (one fresh process per configuration)",
    )
    args = parser.parse_args()

    volume_path = sample_manifest(verify=False).set_index("volume_id").loc["mni152_2009", "path"]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench_motion_")
    spacings = [2.0] if args.quick else [1.0, 2.0]
    for spacing in spacings:
        image = preprocess(volume_path, spacing, GRIDS[spacing], normalise=False)
        for batch in (1, 8):
            for n in (2, 4, 8):
                deg, tra, times = draw(int(spacing * 100 + n + batch), n, batch)
                volume_file = os.path.join(tmp, f"volume_{spacing:g}mm.pt")
                torch.save(
                    {"data": image.data, "affine": torch.as_tensor(image.affine)}, volume_file
                )
                images = [
                    tio.ScalarImage(tensor=image.data * (1 + 0.01 * i), affine=image.affine)
                    for i in range(batch)
                ]
                volumes = torch.cat([im.data for im in images])
                repeats = args.repeats if batch == 1 else args.repeats_batch
                for device in devices:
                    run_ours(volumes[:1], image.affine, deg[:1], tra[:1], times[:1], device)  # warm
                    t_ref, t_ours = [], []
                    for _ in range(repeats):
                        if device.type == "cpu" or not t_ref:
                            s, ref = timed(run_torchio, images, deg, tra, times)
                            t_ref.append(s)
                        s, ours = timed(run_ours, volumes, image.affine, deg, tra, times, device)
                        t_ours.append(s)
                    seed = int(spacing * 100 + n + batch)
                    m_ref = (
                        peak_mb("torchio", volume_file, n, batch, seed) if args.memory else np.nan
                    )
                    m_ours = (
                        peak_mb("ours", volume_file, n, batch, seed)
                        if args.memory and device.type == "cpu"
                        else np.nan
                    )
                    ref_t = torch.cat(ref).double()
                    err = float((ours.cpu().double() - ref_t).norm() / ref_t.norm())
                    row = {
                        "spacing_mm": spacing,
                        "shape": "x".join(map(str, GRIDS[spacing])),
                        "n": n,
                        "batch": batch,
                        "device": device.type,
                        "torchio_s": min(t_ref),
                        "ours_s": min(t_ours),
                        "ratio": min(t_ref) / min(t_ours),
                        "torchio_vol_per_s": batch / min(t_ref),
                        "ours_vol_per_s": batch / min(t_ours),
                        "torchio_peak_mb": m_ref,
                        "ours_peak_mb": m_ours,
                        "rel_l2": err,
                        "repeats": repeats,
                    }
                    rows.append(row)
                    print(
                        f"{spacing:.0f} mm  n={n}  batch={batch}  {device.type:4s}  "
                        f"torchio {row['torchio_s']:7.2f} s  ours {row['ours_s']:7.2f} s  "
                        f"ratio {row['ratio']:5.2f}x  peak MB {m_ref:7.0f} / {m_ours:7.0f}  "
                        f"rel L2 {err:.1e}",
                        flush=True,
                    )
    table = pd.DataFrame(rows)
    table["threads"] = torch.get_num_threads()
    table["cpu_count"] = os.cpu_count()
    table["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    table["thp_mem_alloc"] = os.environ.get("THP_MEM_ALLOC_ENABLE")
    table["torch"] = torch.__version__
    table["torchio"] = tio.__version__
    table["machine"] = platform.machine()
    table["load_avg_1min"] = os.getloadavg()[0]
    out = paths.tables_dir() / "bench_motion.csv"
    table.to_csv(out, index=False)
    cols = [
        "spacing_mm",
        "n",
        "batch",
        "device",
        "torchio_s",
        "ours_s",
        "ratio",
        "torchio_peak_mb",
        "ours_peak_mb",
        "rel_l2",
    ]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
