"""``python -m motionqc.sample_data``: :mod:`motionqc.data.sample` under its name before the layout."""

from __future__ import annotations

from motionqc.data.sample import *  # noqa: F403 - the home's names, re-exported
from motionqc.data.sample import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    raise SystemExit(main())
