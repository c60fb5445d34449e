"""``python -m motionqc.capacity``: :mod:`motionqc.runtime.capacity` under its name before the layout."""

from __future__ import annotations

from motionqc.runtime.capacity import (  # noqa: F401 - re-exported
    activation_bytes,
    main,
    plan,
    training_flops,
)

__all__ = [
    "activation_bytes",
    "training_flops",
    "plan",
]

if __name__ == "__main__":
    raise SystemExit(main())
