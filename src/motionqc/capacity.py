"""``python -m motionqc.capacity``: :mod:`motionqc.runtime.capacity` under its name before the layout."""

from __future__ import annotations

from motionqc.runtime.capacity import *  # noqa: F403 - the home's names, re-exported
from motionqc.runtime.capacity import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    raise SystemExit(main())
