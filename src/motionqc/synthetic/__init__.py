"""The synthetic data: motion parameters and sets, pretraining heads, the demo QC set.

Motion parameters and sets (:mod:`.motion_sets`), pretraining heads and
rendered sets (:mod:`.heads`), the motion pool and per-step augmentation of the recipe, and the
demo QC set (:mod:`.qc_demo`).

``motionqc.synthetic`` re-exports :mod:`.motion_sets` and :mod:`.parameters`, its names before
the layout.
"""

from __future__ import annotations

from motionqc.synthetic import motion_sets as _motion_sets
from motionqc.synthetic import parameters as _parameters
from motionqc.synthetic.motion_sets import *  # noqa: F403 - the names before the layout, re-exported
from motionqc.synthetic.parameters import *  # noqa: F403

__all__ = [*_parameters.__all__, *_motion_sets.__all__]
