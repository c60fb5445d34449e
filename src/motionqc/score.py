"""``motionqc.score``: :mod:`motionqc.physics.score` under its name before the layout."""

from __future__ import annotations

from motionqc.physics.score import *  # noqa: F403 - the home's names, re-exported
from motionqc.physics.score import __all__  # noqa: F401
