"""One encoder experiment of ``benchmarks/pretrain_experiments.csv``: a recipe with knobs changed.

Runs the pretraining stage of notebook 03 (:func:`motionqc.stages.pretrain.run`: pool, training,
temperature, the unseen-head test under TorchIO's ``Motion``) with a recipe of
:data:`motionqc.training.recipe.RECIPES` whose knobs are overridden by JSON, and writes
``metrics.csv``, ``bands.csv``, ``predictions.csv`` and ``encoder.pt`` to ``--out``::

    .venv/bin/python benchmarks/recipe_experiment.py --out build/experiments/NAME \\
        [--recipe sample] [--set '{"steps": 1000}'] [--source-augment '{"p_remap": 0.8}'] \\
        [--augment '{"p_geometry": 0}'] [--head ID=PATH ...] [--corpus [--data-root DIR]]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from motionqc import paths
from motionqc.data.corpus import load_corpus, training_heads
from motionqc.data.volumes import sample_manifest
from motionqc.models.encoder import save_encoder
from motionqc.stages import pretrain as stage
from motionqc.training.recipe import RECIPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="sample", choices=sorted(RECIPES))
    parser.add_argument("--set", default="{}", help="JSON: recipe knobs to replace")
    parser.add_argument("--augment", default="{}", help="JSON: per-step augmentation knobs")
    parser.add_argument("--source-augment", default="{}", help="JSON: source knobs (before motion)")
    parser.add_argument("--test-heads", nargs="+", default=["colin27"])
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument(
        "--corpus",
        action="store_true",
        help="train and test on the corpus's split (its test heads on a 1 mm grid; --set can "
        "change its heads, e.g. '{\"label_maps\": []}')",
    )
    parser.add_argument("--data-root", default=None, help="the corpus (MOTIONQC_DATA_ROOT)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--head",
        action="append",
        default=[],
        metavar="ID=PATH",
        help="a head besides the sample manifest's (name it in --set's train_heads to train on it)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    base = RECIPES[args.recipe]
    test_heads, grid_mm = args.test_heads, None
    if args.corpus:  # the corpus's split (data_manifest/corpus.tsv), before --set's changes
        manifest = load_corpus(data_root=args.data_root)
        train, val, test, maps = training_heads(manifest)
        base = base.replace(train_heads=train, val_heads=val, label_maps=maps)
        test_heads, grid_mm = list(test), 1.0
    else:
        manifest = sample_manifest()
    config = base.replace(
        augment=dict(base.augment, **json.loads(args.augment)),
        source_augment=dict(base.source_augment, **json.loads(args.source_augment)),
        **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.set).items()},
    )
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    for item in args.head:
        head, sep, path = item.partition("=")
        if not sep or not head or not Path(path).is_file():
            parser.error(f"--head {item!r}: expected ID=PATH naming an existing NIfTI file")
        if head in files:
            parser.error(f"--head {item!r}: {head!r} is already a head of the sample manifest")
        files[head] = path
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = stage.run(
        config,
        files,
        test_heads=test_heads,
        test_grid_mm=grid_mm,
        cache_dir=paths.build_dir() / "cache" / "recipe",
        run_dir=args.out / "train",
        num_workers=args.num_workers,
        draws=args.draws,
    )
    print(result.metrics.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(result.bands.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    minutes = {k: round(v / 60, 1) for k, v in result.timing_s.items()}
    print(f"minutes: {minutes}, total {(time.perf_counter() - t0) / 60:.1f}")
    result.metrics.to_csv(args.out / "metrics.csv", index=False)
    result.bands.to_csv(args.out / "bands.csv", index=False)
    result.predictions.to_csv(args.out / "predictions.csv", index=False)
    meta = result.meta
    save_encoder(
        args.out / "encoder.pt",
        result.model,
        spacing_mm=meta["spacing_mm"],
        shape=meta["shape"],
        input_intensity=meta["input_intensity"],
        temperature=meta["temperature"],
        score_convention=meta["score_convention"],
        detail_mm=meta["detail_mm"],
        info={"recipe": config.as_dict()},
    )


if __name__ == "__main__":
    main()
