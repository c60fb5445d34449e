"""The QC task in one place: manual ratings 1–4 and the poster's three classes.

The poster merges the ratings 1 and 2 (too few to learn on their own) into one class:
{1, 2} → 0, 3 → 1, 4 → 2 (4 = best). Every model, table, report and file of the package reads the
number of classes and their labels from here, and a QC head file records them
(:func:`task_record`).
"""

from __future__ import annotations

import pandas as pd

__all__ = [
    "CLASS_LABELS",
    "N_QC_CLASSES",
    "QC_CLASSES",
    "QC_CLASS_IDS",
    "QC_CLASS_NAMES",
    "RATINGS",
    "qc_class",
    "task_record",
]

RATINGS: tuple[int, ...] = (1, 2, 3, 4)
"""The manual QC ratings (4 = best)."""

QC_CLASSES: dict[int, int] = {1: 0, 2: 0, 3: 1, 4: 2}
"""Manual QC score (1–4) → transfer-task class, as the poster: {1,2} → 0, 3 → 1, 4 → 2."""

QC_CLASS_IDS: tuple[int, ...] = tuple(sorted(set(QC_CLASSES.values())))
"""The classes: 0 = QC 1/2, 1 = QC 3, 2 = QC 4."""

N_QC_CLASSES: int = len(QC_CLASS_IDS)
"""Number of QC classes (the outputs of a QC head)."""

CLASS_LABELS: tuple[str, ...] = ("1/2", "3", "4")
"""The ratings of each class, in class order (table columns)."""

QC_CLASS_NAMES: dict[int, str] = {0: "0 (rated 1–2)", 1: "1 (rated 3)", 2: "2 (rated 4, best)"}
"""Class → label shown in the report."""


def qc_class(score: float | int) -> int:
    """Map a manual QC score to the poster's 3-class label.

    Args:
        score: QC score 1–4 (4 = best).

    Returns:
        0 for scores 1 and 2, 1 for 3, 2 for 4.

    Raises:
        ValueError: If the score is not one of 1, 2, 3, 4.
    """
    if score is None or pd.isna(score) or float(score) not in QC_CLASSES:
        raise ValueError(f"QC score {score!r} is not one of 1, 2, 3, 4")
    return QC_CLASSES[int(score)]


def task_record() -> dict[str, object]:
    """The task as plain types, recorded in every QC head file."""
    return {
        "n_classes": N_QC_CLASSES,
        "rating_to_class": {str(k): v for k, v in QC_CLASSES.items()},
        "class_labels": list(CLASS_LABELS),
    }
