"""``python -m motionqc.standin``: :mod:`motionqc.data.standin` under its name before the layout."""

from __future__ import annotations

from motionqc.data.standin import *  # noqa: F403 - the home's names, re-exported
from motionqc.data.standin import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    raise SystemExit(main())
