"""The synthetic data: motion parameters and sets, pretraining heads, the demo QC set.

Motion parameters and sets (:mod:`.motion_sets`), pretraining heads and
rendered sets (:mod:`.heads`), the motion pool and per-step augmentation of the recipe, and the
demo QC set (:mod:`.qc_demo`).

``motionqc.synthetic`` re-exports :mod:`.motion_sets` and :mod:`.parameters`, its names before
the layout.
"""

from __future__ import annotations

from motionqc.synthetic.motion_sets import (  # noqa: F401 - re-exported
    SyntheticMotionDataset,
    build_parameter_table,
    export_nifti,
    read_parameter_table,
    row_params,
    split_sources,
)
from motionqc.synthetic.parameters import (  # noqa: F401 - re-exported
    MotionParams,
    sample_authors_motion,
    sample_motion,
    sample_scored_motion,
    torchio_times,
)

__all__ = [
    "MotionParams",
    "sample_authors_motion",
    "sample_motion",
    "sample_scored_motion",
    "torchio_times",
    "SyntheticMotionDataset",
    "build_parameter_table",
    "export_nifti",
    "read_parameter_table",
    "row_params",
    "split_sources",
]
