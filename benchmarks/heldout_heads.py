"""An encoder on the corpus's test heads: held-out subjects and heads from other scanners.

Each test head of the corpus manifest (``split == test``: held-out IXI subjects and the
``cross_scanner`` heads) is put on a 1 mm grid, corrupted by **TorchIO's own** ``Motion`` at the
unseen-head test's scores (0–4 mm) and preprocessed as ``motionqc score`` does for the encoder
under test (its own grid). Writes ``predictions.csv`` (one row per volume), ``metrics.csv``
(pooled: all, held_out, cross_scanner), ``heads.csv`` (clean reading, within-head Spearman,
offset) and ``bands.csv`` to ``--out``, and prints them::

    .venv/bin/python benchmarks/heldout_heads.py --data-root DIR --out build/heldout/v2
    .venv/bin/python benchmarks/heldout_heads.py --data-root DIR --checkpoint ENC.pt --out ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from motionqc.data.corpus import load_corpus
from motionqc.evaluation.encoder_test import (
    band_table,
    head_table,
    predict_table,
    split_metrics,
    unseen_head_inputs,
)
from motionqc.models.encoder import load_encoder, released_encoder_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="the corpus (MOTIONQC_DATA_ROOT)")
    parser.add_argument("--manifest", default=None, help="default: data_manifest/corpus.tsv")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the release")
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument(
        "--seed",
        type=int,
        default=12345,
        help="base seed of the motions (12345: the release test's)",
    )
    parser.add_argument("--grid-mm", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    corpus = load_corpus(args.manifest, args.data_root)
    test = corpus[corpus["split"] == "test"]
    heads = dict(zip(test["volume_id"], test["path"], strict=True))
    sets = dict(zip(test["volume_id"], test["test_set"], strict=True))
    model, meta = load_encoder(args.checkpoint or released_encoder_path())
    t0 = time.perf_counter()
    rows, inputs = unseen_head_inputs(
        meta, heads, draws=args.draws, seed=args.seed, grid_mm=args.grid_mm
    )
    table = predict_table(model, meta, rows, inputs)
    table["test_set"] = table["head"].map(sets)
    metrics = pd.DataFrame(
        [{"set": "all", **split_metrics(table)}]
        + [{"set": s, **split_metrics(sub)} for s, sub in table.groupby("test_set")]
    )
    heads_out = head_table(table)
    heads_out.insert(1, "test_set", heads_out["head"].map(sets))
    bands = band_table(table)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "predictions.csv", index=False)
    metrics.to_csv(args.out / "metrics.csv", index=False)
    heads_out.to_csv(args.out / "heads.csv", index=False)
    bands.to_csv(args.out / "bands.csv", index=False)
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print(metrics.to_string(index=False, float_format=fmt))
    print(heads_out.to_string(index=False, float_format=fmt))
    print(bands.to_string(index=False, float_format=fmt))
    print(f"{len(table)} volumes in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
