"""``make pretrain``: train the released encoder with :mod:`motionqc.training.recipe`, test it, ship it.

``python -m motionqc.training.release`` (what ``make pretrain`` runs) renders the motion pool, trains for
the recipe's steps (resumable: run the same command again after an interruption), fits a softmax
temperature on validation, tests the encoder on heads it never saw — corrupted by **TorchIO's own**
``Motion`` at 1 mm and preprocessed as ``motionqc score`` does — and writes
``src/motionqc/weights/motion_encoder.pt`` with ``motion_encoder.json`` beside it (commit,
command, the SHA-256 of every head used, seed, steps, geometry, bins, score convention, the
unseen-head metrics and the file's own SHA-256).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from motionqc import paths
from motionqc.data.corpus import IXI_ATTRIBUTION, load_corpus, training_heads
from motionqc.data.volumes import file_sha256, sample_manifest
from motionqc.evaluation import encoder_test
from motionqc.models.encoder import released_encoder_path, save_encoder
from motionqc.models.soft_labels import BIN_RANGE, N_BINS, SIGMA
from motionqc.runtime.devices import distributed_info, resolve_device
from motionqc.stages import pretrain as stage
from motionqc.synthetic.batch_motion import MOTION_MODES
from motionqc.training.recipe import (
    RECIPES,
    RecipeConfig,
)

__all__ = ["CORPUS_RECIPE", "run", "main"]

CORPUS_RECIPE = "corpus"
"""The recipe of the released encoder: trained on the corpus of real heads (its split)."""


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(paths.repo_root()), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(paths.repo_root()), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError, RuntimeError):
        return "unknown"


def run(
    config: RecipeConfig,
    *,
    out: Path,
    run_dir: Path,
    test_heads: Sequence[str] = ("colin27",),
    num_workers: int = 2,
    draws: int = 4,
    command: str = "",
    cache_dir: Path | None = None,
    device: str = "cpu",
    corpus: pd.DataFrame | None = None,
) -> dict[str, object]:
    """Train, calibrate, test and write the encoder and its JSON (see the module docstring).

    Args:
        config: The recipe.
        out: Output ``.pt`` path (its ``.json`` goes beside it).
        run_dir: The training checkpoint (resumable) and ``predictions.csv``.
        test_heads: Heads kept out of training and used for the unseen-head test.
        num_workers: Rendering processes.
        draws: Motions per test score and head.
        command: The command line recorded in the JSON.
        cache_dir: Folder of the motion pool's chunks (default ``build/cache/recipe``).
        device: Where the encoder trains (``cuda``: under DDP each rank's own GPU).
        corpus: The corpus manifest (:func:`motionqc.data.corpus.load_corpus`, files verified):
            its heads replace the sample heads, the test heads go on a 1 mm grid before their
            motion, and the JSON lists every head's split, SHA-256 and licence.

    Under ``torchrun --nproc_per_node=N`` every rank trains its share of each batch
    (:func:`motionqc.training.recipe.train`) and rank 0 writes the files.

    Returns:
        The provenance written to the JSON; on a rank other than 0, the same without the file's
        ``sha256`` (nothing is written there).

    Raises:
        ValueError: If a test head is also a training head.
    """
    commit = _commit()  # the code that trains, before the run (the tree may move meanwhile)
    manifest = corpus if corpus is not None else sample_manifest()
    files = dict(zip(manifest["volume_id"], manifest["path"], strict=True))
    result = stage.run(
        config,
        files,
        test_heads=test_heads,
        cache_dir=cache_dir or paths.build_dir() / "cache" / "recipe",  # keyed by its inputs
        run_dir=run_dir / "train",
        num_workers=num_workers,
        draws=draws,
        device=device,
        test_grid_mm=1.0 if corpus is not None else None,
    )
    rank, world, _ = distributed_info()
    metrics = result.metrics.set_index("split").loc["test"].to_dict()
    tested = list(test_heads)
    provenance: dict[str, object] = {
        "format": "motionqc-encoder-release/1",
        "file": out.name,
        "commit": commit,
        "command": command,
        "recipe": config.as_dict(),
        "score_convention": result.meta["score_convention"],
        "geometry": {"spacing_mm": config.spacing_mm, "shape": list(config.shape)},
        "bins": {"bin_range": list(BIN_RANGE), "n_bins": N_BINS, "sigma": SIGMA},
        "input_intensity": result.meta["input_intensity"],
        "temperature": result.meta["temperature"],
        "data": _data_provenance(config, files, tested, corpus),
        "seed": config.seed,
        "steps": config.steps,
        "validation": result.metrics.set_index("split").loc["val"].to_dict(),
        "history": result.history.to_dict("records"),
        "unseen_heads": {
            "heads": list(tested),
            **({"files": _head_records(corpus, tested)} if corpus is not None else {}),
            "motion": "torchio.Motion(image_interpolation='linear') at "
            + ("a 1 mm grid" if corpus is not None else "each head's own resolution"),
            "scores_mm": list(encoder_test.TEST_SCORES),
            "draws": draws,
            "metrics": metrics,
            "coverage_before_temperature": encoder_test.coverage(result.test_raw),
            "bands": result.bands.to_dict("records"),
        },
        "timing_s": result.timing_s,
        "machine": {
            "cpus": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "torch": str(torch.__version__),
            "processes": world,
            "device": device,
        },
    }
    if rank != 0:  # under torchrun rank 0 writes; the others trained their share and stop here
        return provenance
    save_encoder(
        out,
        result.model,
        spacing_mm=config.spacing_mm,
        shape=config.shape,
        info={"recipe": config.name, "unseen_heads": metrics, "seed": config.seed},
        input_intensity=result.meta["input_intensity"],
        temperature=result.meta["temperature"],
        score_convention=result.meta["score_convention"],
    )
    provenance["sha256"] = file_sha256(out)
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    run_dir.mkdir(parents=True, exist_ok=True)
    result.predictions.to_csv(run_dir / "predictions.csv", index=False)
    return provenance


def _repo_relative(path: str | Path) -> str:
    """A path inside the repository as relative to it (no machine's folder in the JSON)."""
    try:
        return str(Path(path).resolve().relative_to(paths.repo_root().resolve()))
    except (ValueError, OSError):
        return str(path)


def _data_provenance(
    config: RecipeConfig,
    files: dict[str, str],
    tested: Sequence[str],
    corpus: pd.DataFrame | None,
) -> dict[str, object]:
    """The heads used and their SHA-256.

    Without a corpus: every head, training and test, with its role. With a corpus: the heads
    that trained (training and validation subjects, label maps) with their split, dataset and
    licence, the manifest and the attribution; the test heads are listed with the test
    (:func:`_head_records`, under ``unseen_heads``), never among the training data.
    """
    if corpus is None:
        return {
            h: {
                "role": "train" if h in config.train_heads else "test",
                "sha256": file_sha256(files[h]),
            }
            for h in [*config.train_heads, *config.val_heads, *config.label_maps, *tested]
        }
    return {
        "manifest": _repo_relative(corpus.attrs.get("source", "")),
        "split_counts": corpus.groupby("split").size().to_dict(),
        "attribution": [IXI_ATTRIBUTION, "SynthSeg label maps (Billot et al. 2023), Apache-2.0"],
        "heads": _head_records(
            corpus, [*config.train_heads, *config.val_heads, *config.label_maps]
        ),
    }


def _head_records(corpus: pd.DataFrame, heads: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each corpus head's split, dataset, licence, use and SHA-256 (from the verified manifest)."""
    rows = corpus.set_index("volume_id")
    keys = {"role": "split", "dataset": "dataset", "licence": "licence", "use": "use"}
    return {
        h: {**{k: str(rows.at[h, c]) for k, c in keys.items()}, "sha256": str(rows.at[h, "sha256"])}
        for h in heads
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``make pretrain`` (``python -m motionqc.training.release --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.training.release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=CORPUS_RECIPE)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    parser.add_argument(
        "--motion",
        choices=list(MOTION_MODES),
        default=None,
        help="override the recipe's motion: pool (rendered once) or batch (new samples every "
        "step, simulated on the training device)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .pt (default: the package's weights/motion_encoder.pt for "
        "the release recipe, checkpoints/recipe-<name>/motion_encoder.pt otherwise)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="training checkpoint and predictions (default: checkpoints/recipe-<name>; "
        "the motion pool is cached in build/cache/recipe)",
    )
    parser.add_argument(
        "--test-heads",
        nargs="+",
        default=["colin27"],
        help="sample heads of the unseen-head test (not with the corpus recipe: its test split)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="the corpus of real heads (default MOTIONQC_DATA_ROOT); the corpus recipe only",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help="the corpus manifest with its split (default data_manifest/corpus.tsv)",
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--draws", type=int, default=4, help="motions per test score and head")
    parser.add_argument(
        "--device",
        default="auto",
        help="where the encoder trains: auto (cuda when a GPU is available, else cpu), cpu, cuda",
    )
    args = parser.parse_args(argv)
    config = RECIPES[args.recipe]
    if args.steps is not None:
        if args.steps < 1:
            parser.error("--steps must be at least 1")
        config = config.replace(steps=args.steps)
    if args.motion is not None:
        config = config.replace(motion=args.motion)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    corpus, test_heads = None, args.test_heads
    if config.name == CORPUS_RECIPE:
        try:
            corpus = load_corpus(args.corpus, args.data_root)
            train, val, test, maps = training_heads(corpus)
        except ValueError as exc:
            parser.error(str(exc))
        config = config.replace(train_heads=train, val_heads=val, label_maps=maps)
        test_heads = list(test)
    run_dir = args.run_dir or paths.checkpoints_dir() / f"recipe-{config.name}"
    out = args.out or (
        released_encoder_path() if config.name == CORPUS_RECIPE else run_dir / "motion_encoder.pt"
    )
    command = "python -m motionqc.training.release " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    prov = run(
        config,
        out=out,
        run_dir=run_dir,
        test_heads=test_heads,
        num_workers=args.num_workers,
        draws=args.draws,
        command=command.strip(),
        device=str(device),
        corpus=corpus,
    )
    if distributed_info()[0] != 0:  # a DDP rank other than 0: nothing written, nothing to say
        return 0
    m = prov["unseen_heads"]["metrics"]  # type: ignore[index]
    print(
        f"wrote {out} ({prov['sha256'][:12]}): unseen heads R² {m['r2']:.3f}, Spearman "
        f"{m['spearman']:.3f}, MAE {m['mae']:.3f} mm, ±1/±2 std {m['within_1std']:.2f}/"
        f"{m['within_2std']:.2f}, temperature {prov['temperature']:.2f}"
    )
    print(pd.DataFrame(prov["unseen_heads"]["bands"]).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
