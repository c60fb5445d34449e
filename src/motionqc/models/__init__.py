"""Models: SFCN, the QC head, soft labels and the encoder file.

SFCN and the QC head (:mod:`.sfcn`), soft labels (:mod:`.soft_labels`) and the encoder
file with its inference (:mod:`.encoder`).

``motionqc.models`` re-exports :mod:`.sfcn`, its names before the layout.
"""

from __future__ import annotations

from motionqc.models.sfcn import (  # noqa: F401 - re-exported
    SFCN,
    SFCN_CHANNELS,
    QCHead,
    encoder_shape,
)

__all__ = [
    "SFCN",
    "QCHead",
    "SFCN_CHANNELS",
    "encoder_shape",
]
