"""Score heads the released encoder never saw, corrupted by TorchIO's own Motion, with `motionqc score`.

What a new user would do: take a T1w head at its own resolution (a corpus head: on a 1 mm grid,
as acquired; ``--data-root`` names the corpus), corrupt copies of it with
``torchio.Motion`` at known scores (0, 0.3, 0.6, 1, 1.5, 2, 3, 4 mm under the encoder's score
convention; ``--draws`` independent motions each), lay them out as a BIDS folder, and run the
``motionqc score`` command (default: the one on PATH, e.g. from a fresh ``pip install .``) with no
``--checkpoint``. The predictions in ``motion_T1w.tsv`` are compared with the truth: Spearman, MAE,
R², ±1/±2 std coverage and the per-band table, written to
``figures/tables/released_encoder_unseen_heads.csv`` (one row per volume) and printed.

    python benchmarks/check_released_encoder.py --motionqc /tmp/venv/bin/motionqc --draws 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from motionqc import paths
from motionqc.data.corpus import load_corpus
from motionqc.data.volumes import sample_manifest
from motionqc.evaluation.encoder_test import band_table, split_metrics, torchio_corruptions
from motionqc.models.encoder import released_encoder_path


def build_bids(
    heads: dict[str, str], root: Path, draws: int, seed: int, grid_mm: float | None = None
) -> pd.DataFrame:
    """Write one BIDS subject per corrupted copy; return the truth table (bids_name, head, true)."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "motionqc unseen-head check", "BIDSVersion": "1.9.0"})
    )
    rows = []
    corrupted = torchio_corruptions(heads, draws=draws, seed=seed, grid_mm=grid_mm)
    for head, s_idx, d, moved, p in corrupted:
        sub = f"{''.join(c for c in head if c.isalnum())}{s_idx:02d}{d:02d}"
        anat = root / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        moved.save(anat / f"sub-{sub}_T1w.nii.gz")
        rows.append(
            {"bids_name": f"sub-{sub}_T1w", "head": head, "draw": d, "true": float(p["score"])}
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--motionqc",
        default=shutil.which("motionqc") or "motionqc",
        help="the motionqc command to run (default: the one on PATH)",
    )
    parser.add_argument(
        "--heads",
        nargs="+",
        default=None,
        help="sample heads to corrupt (default: the released encoder's test heads)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="the corpus (default MOTIONQC_DATA_ROOT), for an encoder tested on corpus heads",
    )
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--out", type=Path, default=paths.tables_dir() / "released_encoder_unseen_heads.csv"
    )
    args = parser.parse_args(argv)
    info = json.loads(released_encoder_path().with_suffix(".json").read_text())
    heads = args.heads or info["unseen_heads"]["heads"]
    used = set(info["recipe"]["train_heads"]) & set(heads)
    if used:
        parser.error(f"head(s) used to train the released encoder: {', '.join(sorted(used))}")
    manifest = sample_manifest()
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    grid_mm = None  # the sample heads at their own resolution
    if not set(heads) <= set(files):  # an encoder tested on the corpus: its heads on 1 mm
        corpus = load_corpus(data_root=args.data_root)
        files = dict(zip(corpus["volume_id"], corpus["path"], strict=True))
        grid_mm = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        bids, out = Path(tmp) / "bids", Path(tmp) / "out"
        truth = build_bids({h: files[h] for h in heads}, bids, args.draws, args.seed, grid_mm)
        start = time.perf_counter()
        cmd = [args.motionqc, "score", str(bids), str(out), "participant", "--no-mosaics"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        scored = pd.read_csv(out / "motion_T1w.tsv", sep="\t")
        model = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
    table = truth.merge(scored[["bids_name", "motion_mm", "motion_std"]], on="bids_name")
    table = table.rename(columns={"motion_mm": "pred", "motion_std": "std"})
    table.to_csv(args.out, index=False)
    metrics = split_metrics(table)
    print(
        f"{' '.join(cmd[:2])} ... on {len(table)} volumes of {', '.join(heads)}: {seconds:.0f} s; "
        f"encoder {model.get('Model', {}).get('checkpoint')} "
        f"(sha256 {str(model.get('Model', {}).get('sha256'))[:12]})"
    )
    print({k: round(v, 3) for k, v in metrics.items()})
    print(band_table(table).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
