"""The ``motionqc`` command line: score a BIDS dataset, merge shards, simulate motion, train a QC head.

::

    motionqc score BIDS_DIR OUT_DIR participant [--participant-label 01 02] [--checkpoint encoder.pt]
                   [--qc-head qc_head.pt] [--device auto] [--batch-size N] [--num-workers N]
                   [--precision auto|fp32|bf16] [--shard I/N]
    motionqc group OUT_DIR
    motionqc simulate IN.nii.gz OUT.nii.gz --score 1.5 --seed 0 [--n-transforms 4]
    motionqc train-qc --manifest ratings.tsv --checkpoint encoder.pt OUT_DIR [--seeds 5]
    motionqc train-qc --manifest report_ratings.tsv --bids-dir BIDS_DIR OUT_DIR

Exit status: 0 when something was scored (bad volumes are listed in the table with their error
and do not fail the run), 1 when nothing could be scored or a step failed, 2 for unusable
arguments (an output folder inside the BIDS dataset, a missing checkpoint), 130 when interrupted
(what was written is kept; run the same command again to resume).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import motionqc
from motionqc.app.simulate import simulate_file, simulation_sidecar_path
from motionqc.runtime.allocator import keep_freed_memory
from motionqc.runtime.devices import default_batch_size, default_num_workers

__all__ = ["build_parser", "main"]

PROG = "motionqc"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Show ``(default: …)`` after the help of every option that has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or "default:" in text
            or action.default in (None, argparse.SUPPRESS)
            or isinstance(action.default, bool)
        ):
            return text
        return text + " (default: %(default)s)"


def _error(message: object) -> None:
    """One line on stderr; a file name's escape sequences and stray bytes are shown escaped."""
    from motionqc.app.text import one_line

    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)


def _profile_name() -> str:
    from motionqc.profiles import get_profile

    return get_profile().name


def _default_checkpoint_text() -> str:
    """The default checkpoint as shown by ``--help``."""
    from motionqc.models.encoder import released_encoder_path

    return str(released_encoder_path())


def _default_checkpoint() -> Path:
    """The released encoder shipped inside the package (``make pretrain`` writes it)."""
    from motionqc.models.encoder import released_encoder_path

    return released_encoder_path()


def _shard(text: str) -> tuple[int, int]:
    from motionqc.app.derivatives import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``func``, described by ``func``'s docstring.

    The docstring's first line, lower-cased and without its full stop, is the subcommand's help
    in ``motionqc --help``; its other paragraphs are the description in ``motionqc NAME --help``.
    """
    summary, _, description = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
    summary = summary[:1].lower() + summary[1:].rstrip(".")
    parser = sub.add_parser(name, help=summary, description=description)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``motionqc`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Motion scores and QC classes for T1w MRI (pretrained on synthetic motion).",
        epilog=__doc__.split("::")[0].strip().splitlines()[0],
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {motionqc.__version__}")
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Formatter),
    )
    checkpoint_help = (
        "pretrained encoder file (motionqc.models.encoder.save_encoder, e.g. notebook 03's "
        "checkpoints/<profile>/encoder.pt); default: the released encoder shipped in the "
        f"package, {_default_checkpoint_text()} (its provenance: motion_encoder.json beside it)"
    )

    score = _add_command(sub, "score", _cmd_score)
    score.add_argument("bids_dir", metavar="BIDS_DIR", type=Path, help="the BIDS dataset")
    score.add_argument(
        "output_dir", metavar="OUT_DIR", type=Path, help="derivatives folder (not inside BIDS_DIR)"
    )
    score.add_argument("analysis_level", choices=["participant"], help="BIDS-App analysis level")
    score.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        metavar="LABEL",
        default=None,
        help="only these subjects (with or without 'sub-'); default: all",
    )
    score.add_argument("--checkpoint", type=Path, default=None, help=checkpoint_help)
    score.add_argument(
        "--qc-head",
        type=Path,
        default=None,
        help="QC head file from `motionqc train-qc` (adds p_qc0..2 and qc_class)",
    )
    score.add_argument(
        "--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ..."
    )
    score.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="volumes per forward pass; default: 16 on CUDA, 1 on CPU",
    )
    score.add_argument(
        "--num-workers",
        type=_non_negative,
        default=None,
        help="loader processes (0: load in the main process); default: on CUDA half the usable "
        f"cores (here {default_num_workers('cuda')}), on CPU one per 8 cores (here "
        f"{default_num_workers('cpu')}): on a few cores loading costs less than the cores a "
        "worker takes from the model",
    )
    score.add_argument(
        "--threads",
        type=_non_negative,
        default=0,
        help="torch threads of the scoring process; 0: on CPU every usable core",
    )
    score.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX) and on CUDA "
        "(fp16 AMP on GPUs without bf16), fp32 otherwise",
    )
    score.add_argument(
        "--shard",
        type=_shard,
        default="0/1",
        metavar="I/N",
        help="score shard I of N (0 <= I < N; e.g. $SLURM_ARRAY_TASK_ID/$N); merge with `group`",
    )
    score.add_argument(
        "--no-mosaics",
        dest="mosaics",
        action="store_false",
        help="do not render a mosaic per volume (the report then has no images)",
    )
    score.add_argument(
        "--retry-errors",
        action="store_true",
        help="score again the volumes listed with an error in the table",
    )
    score.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )

    group = _add_command(sub, "group", _cmd_group)
    group.add_argument("output_dir", metavar="OUT_DIR", type=Path, help="derivatives folder")

    simulate = _add_command(sub, "simulate", _cmd_simulate)
    simulate.add_argument("input", metavar="IN", type=Path, help="input NIfTI volume")
    simulate.add_argument("output", metavar="OUT", type=Path, help="output NIfTI (.nii or .nii.gz)")
    simulate.add_argument("--score", type=float, default=1.5, help="target motion score, mm")
    simulate.add_argument("--seed", type=int, default=0, help="seed of the motion draw")
    simulate.add_argument(
        "--n-transforms",
        type=_positive,
        default=None,
        help="number of motion transforms; default: drawn in 2..7 from the seed",
    )
    simulate.add_argument(
        "--force",
        action="store_true",
        help="replace an existing OUT or sidecar that motionqc simulate did not write (IN is "
        "never replaced)",
    )

    train = _add_command(sub, "train-qc", _cmd_train_qc)
    train.add_argument(
        "--manifest",
        type=Path,
        required=True,
        help="ratings manifest TSV; with --bids-dir, a ratings TSV keyed by bids_name (the "
        "report's export: bids_name, rating, comment, rater, timestamp)",
    )
    train.add_argument(
        "--bids-dir",
        type=Path,
        default=None,
        help="BIDS dataset the ratings of --manifest refer to (their files are found there; "
        "the manifest built from both is written to OUT_DIR/manifest.tsv)",
    )
    train.add_argument("--checkpoint", type=Path, default=None, help=checkpoint_help)
    train.add_argument("output_dir", metavar="OUT_DIR", type=Path, help="output folder")
    train.add_argument("--seeds", type=_positive, default=5, help="number of seeds")
    train.add_argument(
        "--skip-missing",
        action="store_true",
        help="train without the rated volumes whose files are missing or unusable (listed in "
        "OUT_DIR/errors.json); without it they stop the run with exit status 1",
    )
    return parser


# --------------------------------------------------------------------------- commands
def _checkpoint(args: argparse.Namespace) -> Path:
    return args.checkpoint if args.checkpoint is not None else _default_checkpoint()


def _cmd_score(args: argparse.Namespace) -> int:
    """Score every T1w of a BIDS dataset (participant step).

    Score every sub-*/[ses-*/]anat/*_T1w.nii[.gz] of BIDS_DIR: predicted motion (mm, Jenkinson
    RMS deviation) with its uncertainty and, with --qc-head, QC class probabilities. Writes a
    BIDS derivative dataset in OUT_DIR: dataset_description.json, motion_T1w.tsv
    (motion_T1w_shard-IIIIofNNNN.tsv with --shard) keyed by bids_name, one mosaic PNG per volume
    and, when not sharded, report.html. Volumes already in the table are skipped, so an
    interrupted run resumes where it stopped.
    """
    from motionqc.app.preflight import (
        clamp_threads,
        import_error_line,
        os_error_line,
        output_dir_problem,
        selection_warnings,
    )
    from motionqc.app.scoring import run_participant
    from motionqc.app.text import printable
    from motionqc.data.volumes import ManifestError
    from motionqc.models.encoder import EncoderError
    from motionqc.runtime.devices import resolve_device

    try:
        checkpoint = _checkpoint(args)
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        _error(exc)
        return 2
    problem = output_dir_problem(args.output_dir)
    if problem is not None:
        _error(problem)
        return 2
    batch_size = args.batch_size or default_batch_size(device.type)

    def log(message: str) -> None:
        print(f"{PROG}: {printable(message)}", file=sys.stderr, flush=True)  # names as they are

    threads, lowered = clamp_threads(args.threads)
    try:
        warned = selection_warnings(args.bids_dir, args.participant_label)
    except OSError as exc:  # a folder that can be listed but not entered: say it, go on
        warned = [f"{exc.filename}: cannot be read ({exc.strerror or exc})"]
    for line in [lowered, *warned]:
        if line:
            log(f"warning: {line}")

    try:
        summary = run_participant(
            args.bids_dir,
            args.output_dir,
            checkpoint,
            participant_label=args.participant_label,
            qc_head=args.qc_head,
            device=str(device),
            precision=args.precision,
            batch_size=batch_size,
            num_workers=args.num_workers,
            threads=threads or None,
            shard=args.shard,
            mosaics=args.mosaics,
            retry_errors=args.retry_errors,
            progress=args.progress,
            log=log,
        )
    except (EncoderError, ManifestError) as exc:
        _error(exc)
        return 2
    except ImportError as exc:
        _error(import_error_line(exc, args.qc_head))
        return 2
    except ValueError as exc:
        _error(exc)
        return 2
    except RuntimeError as exc:  # e.g. a loader process killed (out of memory)
        _error(f"{exc} (what was written is kept: run the same command again to resume)")
        return 1
    except OSError as exc:  # a folder that cannot be written, a full disk
        _error(f"{os_error_line(exc)}; what was written is kept: run the same command again")
        return 1
    print(
        f"{summary.table}: {summary.scored} scored, {summary.errors} error(s), "
        f"{summary.skipped} already there; {summary.ok_total}/{summary.selected} scored in all"
    )
    for name in summary.error_names:
        print(f"  not scored: {name} (see the error column)")
    if summary.report is not None:
        print(f"report: {summary.report}")
    if summary.interrupted:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if summary.ok_total == 0:
        _error("nothing could be scored")
        return 1
    return 0


def _cmd_group(args: argparse.Namespace) -> int:
    """Merge the shard tables and write report.html (group step).

    Merge OUT_DIR/motion_T1w*.tsv into OUT_DIR/group_T1w.tsv and write OUT_DIR/report.html
    (volumes ranked by predicted motion, mosaic, score ± uncertainty, QC class, group
    distribution).
    """
    from motionqc.app.scoring import group_table, run_group

    try:
        report = run_group(args.output_dir)
    except (ValueError, OSError) as exc:
        _error(exc)
        return 1
    table = group_table(args.output_dir)
    n_ok = int((table["status"] == "ok").sum()) if "status" in table.columns else len(table)
    print(f"{args.output_dir / 'group_T1w.tsv'}: {len(table)} volume(s), {n_ok} scored")
    print(f"report: {report}")
    return 0 if n_ok else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    """Corrupt a volume with k-space motion of a chosen severity.

    Add synthetic k-space motion (TorchIO's Motion model) whose motion score (Jenkinson RMS
    deviation, mm) equals --score, at the input's own resolution and orientation. Writes OUT
    and a JSON sidecar (OUT with .json) with the rotations, translations, times and the score.
    """
    from motionqc.app.preflight import os_error_line
    from motionqc.data.volumes import VolumeError

    try:
        sidecar = simulate_file(
            args.input,
            args.output,
            args.score,
            seed=args.seed,
            n_transforms=args.n_transforms,
            force=args.force,
        )
    except (VolumeError, ValueError) as exc:
        _error(exc)
        return 1
    except OSError as exc:  # a folder that cannot be written, a full disk
        _error(os_error_line(exc))
        return 1
    print(
        f"{args.output}: motion score {sidecar['Score']:.4f} mm (target {args.score:g}), "
        f"{sidecar['NTransforms']} transform(s); parameters in {simulation_sidecar_path(args.output)}"
    )
    return 0


def _cmd_train_qc(args: argparse.Namespace) -> int:
    """Train a QC head on your own ratings (frozen encoder, 5 seeds).

    Train the QC head on a lab's own ratings (a manifest TSV with the columns volume_id,
    dataset, site, subject, path, qc_score (1-4) and optionally split) on top of the frozen
    encoder; writes the per-seed and median results and qc_head.pt (for
    `motionqc score --qc-head`) to OUT_DIR.
    """
    try:
        from motionqc.app.train_qc import train_qc_cli
    except ImportError as exc:
        _error(
            "train-qc needs motionqc.app.train_qc (the QC head training), which cannot be imported "
            f"here: {exc}"
        )
        return 2
    from motionqc.data.volumes import ManifestError
    from motionqc.models.encoder import EncoderError

    def log(message: str) -> None:
        print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr, flush=True)

    try:
        checkpoint = _checkpoint(args)
        manifest = args.manifest
        if args.bids_dir is not None:
            from motionqc.app.train_qc import ratings_manifest

            manifest = ratings_manifest(args.bids_dir, args.manifest, args.output_dir, log)
        result = train_qc_cli(
            manifest,
            checkpoint,
            args.output_dir,
            args.seeds,
            skip_missing=args.skip_missing,
            log=log,
        )
    except (EncoderError, ManifestError, ValueError, RuntimeError) as exc:
        _error(exc)
        return 1
    except OSError as exc:  # an output path that is a file, a folder that cannot be written
        from motionqc.app.preflight import os_error_line

        _error(os_error_line(exc))
        return 1
    print(f"results: {result}")
    head = Path(args.output_dir) / "qc_head.pt"
    if head.is_file():
        print(f"QC head: {head} (use with `motionqc score ... --qc-head {head}`)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``motionqc`` command line; returns the exit status.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when nothing could be done, 2 for unusable arguments, 130 on Ctrl-C.
    """
    # Freed activations stay in the process for the next volume instead of being faulted in again.
    keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
