"""``motionqc.motion``: :mod:`motionqc.physics.motion` under its name before the layout."""

from __future__ import annotations

from motionqc.physics.motion import *  # noqa: F403 - the home's names, re-exported
from motionqc.physics.motion import __all__  # noqa: F401
