"""Models: SFCN, the QC head, soft labels and the encoder file.

SFCN and the QC head (:mod:`.sfcn`), soft labels (:mod:`.soft_labels`) and the encoder
file with its inference (:mod:`.encoder`).

``motionqc.models`` re-exports :mod:`.sfcn`, its names before the layout.
"""

from __future__ import annotations

from motionqc.models.sfcn import *  # noqa: F403 - the names before the layout, re-exported
from motionqc.models.sfcn import __all__  # noqa: F401
