"""Data: manifests, volumes, BIDS builders, splits, the sample and the stand-in data.

Manifests, volumes and preprocessing (:mod:`.volumes`), BIDS builders (:mod:`.bids`),
splits, the authors' manifests, the sample volumes
(:mod:`.sample`) and the stand-in for restricted data (:mod:`.standin`).

``motionqc.data`` re-exports :mod:`.volumes`, :func:`.detail.preprocess_rows` and the QC classes (:mod:`motionqc.qc_task`), its
names before the layout.
"""

from __future__ import annotations

from motionqc.data import volumes as _volumes
from motionqc.data.detail import preprocess_rows  # noqa: F401 - re-exported (was in .volumes)
from motionqc.data.volumes import *  # noqa: F403 - the names before the layout, re-exported
from motionqc.qc_task import QC_CLASSES, qc_class  # noqa: F401 - re-exported

__all__ = [*_volumes.__all__, "preprocess_rows", "QC_CLASSES", "qc_class"]
