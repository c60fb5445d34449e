"""``motionqc.bids``: :mod:`motionqc.data.bids` under its name before the layout."""

from __future__ import annotations

from motionqc.data.bids import *  # noqa: F403 - the home's names, re-exported
from motionqc.data.bids import __all__  # noqa: F401
