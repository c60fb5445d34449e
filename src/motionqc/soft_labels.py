"""``motionqc.soft_labels``: :mod:`motionqc.models.soft_labels` under its name before the layout."""

from __future__ import annotations

from motionqc.models.soft_labels import *  # noqa: F403 - the home's names, re-exported
from motionqc.models.soft_labels import __all__  # noqa: F401
