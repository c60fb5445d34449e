"""``python -m motionqc.standin``: :mod:`motionqc.data.standin` under its name before the layout."""

from __future__ import annotations

from motionqc.data.standin import (  # noqa: F401 - re-exported
    BANDS_MM,
    GRID,
    NOISE,
    THICKNESS_MM,
    THICKNESS_NOISE_SD,
    THICKNESS_PER_MM,
    THICKNESS_SUBJECT_SD,
    main,
    select_rows,
    standin_thickness,
    standin_volume,
    write_standin,
)

__all__ = [
    "BANDS_MM",
    "NOISE",
    "GRID",
    "THICKNESS_MM",
    "THICKNESS_SUBJECT_SD",
    "THICKNESS_PER_MM",
    "THICKNESS_NOISE_SD",
    "select_rows",
    "standin_thickness",
    "standin_volume",
    "write_standin",
    "main",
]

if __name__ == "__main__":
    raise SystemExit(main())
