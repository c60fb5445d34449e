"""The poster's printed numbers and the authors' published tables, for showing *beside* ours.

Nothing here is a result of this project: these are the values Bricout et al. printed on the
poster, and loaders for the tables from their public repository (chbricout/motiondetector,
commit fe9c4ac) copied into ``data_manifest/authors/``. Notebooks print them next to the numbers
the code computes, always labelled as the poster's or the authors'.
"""

from __future__ import annotations

import pandas as pd

from motionqc import paths

__all__ = [
    "POSTER_DATA_SPLIT",
    "POSTER_QC_RESULTS",
    "POSTER_QC_SEED_BA",
    "POSTER_EFFICIENCY",
    "POSTER_PRETRAIN_R2",
    "POSTER_COUNTS",
    "authors_table",
    "authors_manifest",
]

POSTER_DATA_SPLIT = pd.DataFrame(
    {"1/2": [7, 1, 9], "3": [38, 12, 90], "4": [70, 26, 125]},
    index=pd.Index(["Train", "Test", "Validation"], name="split"),
)
"""The poster's table "Data Split for QC Task" (volumes per QC class)."""

POSTER_QC_RESULTS = pd.DataFrame(
    {
        "setting": ["transfer", "scratch"],
        "balanced_accuracy": [0.41, 0.35],
        "f1_c0": [0.13, 0.00],
        "f1_c1": [0.34, 0.20],
        "f1_c2": [0.68, 0.70],
    }
)
"""The poster's QC results, median of 5 seeds (classes: 0 = QC 1/2, 1 = QC 3, 2 = QC 4)."""

POSTER_QC_SEED_BA: dict[str, list[float]] = {
    "transfer": [0.375, 0.530, 0.445, 0.360, 0.412],
    "scratch": [0.347, 0.337, 0.351, 0.356, 0.333],
}
"""Per-seed balanced accuracy behind the poster's medians (the authors' result files)."""

POSTER_EFFICIENCY = pd.DataFrame(
    {
        "setting": ["pretrain", "transfer", "scratch"],
        "max_gpu_memory_gb": [39.54, 2.50, 37.41],
        "max_gpu_power_w": [403.94, 76.79, 373.29],
        "duration": ["25:28:56", "00:03:02", "00:19:29"],
    }
)
"""The poster's efficiency table; its "Decreased (%)" row reads 93.32 / 79.43 / 94.00."""

POSTER_PRETRAIN_R2: dict[str, float] = {"poster": 0.89, "authors_file": 0.7868573796105209}
"""R² on the synthetic test set: printed on the poster, and in the authors' results file."""

POSTER_COUNTS: dict[str, int] = {
    "hcpep_volumes": 390,
    "ampscz_volumes": 1048,
    "ampscz_sites": 44,
    "synthetic_sites": 26,
    "transfer_sites": 7,
    "synthetic_pool_ampscz": 319,
    "synthetic_pool_hcpep": 143,
    "transfer_ampscz": 378,
    "synthetic_per_volume": 300,
}
"""Counts printed on the poster."""

_TABLES = {
    "ampscz": {"session": str},
    "hcpep": {"session": str, "subject": str},
    "ampscz_sites": None,
    "qc_test_predictions": None,
    "qc_seed_metrics": None,
    "pretrain_metrics": None,
    "synthetic_test_scores": None,
}


def authors_table(name: str) -> pd.DataFrame:
    """Load one of the authors' published tables from ``data_manifest/authors/``.

    Args:
        name: One of ``ampscz``, ``hcpep``, ``ampscz_sites``, ``qc_test_predictions``,
            ``qc_seed_metrics``, ``pretrain_metrics``, ``synthetic_test_scores``.

    Returns:
        The table.

    Raises:
        ValueError: If the name is unknown.
    """
    if name not in _TABLES:
        raise ValueError(f"unknown authors' table {name!r}: choose one of {', '.join(_TABLES)}")
    return pd.read_csv(
        paths.manifest_dir() / "authors" / f"{name}.tsv", sep="\t", dtype=_TABLES[name]
    )


def authors_manifest() -> pd.DataFrame:
    """The authors' cohort (AMPSCZ + HCP-EP tables) in manifest layout, without images.

    The images are NDA-restricted: ``path`` holds the authors' Clinica ``t1-linear`` file name,
    which does not exist here. Useful for curation figures and split checks.

    Returns:
        Columns ``volume_id, dataset, site, subject, path, qc_score, role, split``.
    """
    frames = []
    for name, dataset in (("ampscz", "AMPSCZ"), ("hcpep", "HCPEP")):
        table = authors_table(name)
        frames.append(
            pd.DataFrame(
                {
                    "volume_id": table["subject"].astype(str) + "_" + table["session"].astype(str),
                    "dataset": dataset,
                    "site": table["site"].astype(str),
                    "subject": table["subject"].astype(str),
                    "path": table["clinica_path"],
                    "qc_score": pd.array(table["qc_score"].round(), dtype="Int64"),
                    "role": table["role"],
                    "split": table["split"],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
