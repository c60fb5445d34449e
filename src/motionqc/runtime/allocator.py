"""glibc malloc settings that keep freed memory in the process (fewer page faults on CPU).

A 3-D CNN step on CPU allocates and frees activations of tens to hundreds of MB. glibc serves
blocks that large with ``mmap`` and gives them back with ``munmap`` when they are freed, so the
next step faults every page in again; in a VM each fault is expensive. Raising the ``mmap``
threshold and the trim threshold keeps those blocks on the heap for reuse. The peak resident set
does not grow (the memory was in use at the peak anyway), but the process no longer returns it
between peaks.

The README (section *Scoring your own data*) gives what this changed on the project's CPU, with
the measurement.

Two ways to apply the settings, both used by the package:

- :data:`ALLOCATOR_ENV` in a child's environment (glibc reads it when the process starts):
  the notebook runner's kernels, the test suite's nbval kernels, the benchmarks (which restart
  themselves with it, :func:`restart_with_env`);
- :func:`keep_freed_memory` in a running process (``mallopt``): the ``motionqc`` command line.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import MutableMapping

__all__ = [
    "ALLOCATOR_ENV",
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "keep_freed_memory",
    "restart_with_env",
    "set_env",
]

MMAP_THRESHOLD = 2**31 - 1
"""Blocks below 2 GiB come from the heap (glibc's default: 128 KiB, adapting up to 32 MiB;
a 1 mm SFCN's first feature map is 0.6 GiB per volume in fp32)."""

TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the top of the heap is returned to the system only above 2 GiB (default 128 KiB)."""

ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}
"""The same settings as environment variables, for processes started from this one."""

_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}  # <malloc.h> M_* options


def set_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`ALLOCATOR_ENV` into an environment, keeping values already set there.

    Args:
        environ: The environment to change (default: ``os.environ``, inherited by children).

    Returns:
        The allocator variables as the environment now has them.
    """
    env = os.environ if environ is None else environ
    for name, value in ALLOCATOR_ENV.items():
        env.setdefault(name, value)
    return {name: env[name] for name in ALLOCATOR_ENV}


def restart_with_env() -> None:
    """Re-execute this Python program with :data:`ALLOCATOR_ENV` unless its variables are all set.

    For scripts whose allocations must all follow the settings (glibc reads them only at start-up,
    so :func:`keep_freed_memory` would leave earlier allocations as they were). Returns only when
    the settings were already in the environment; otherwise the process is replaced.
    """
    if all(name in os.environ for name in ALLOCATOR_ENV):
        return
    set_env()
    os.execv(sys.executable, [sys.executable, *sys.argv])


def keep_freed_memory() -> bool:
    """Apply the settings to the running process with glibc's ``mallopt``.

    Variables of :data:`ALLOCATOR_ENV` already in the environment win (glibc applied them at
    start-up) and are left alone.

    Returns:
        ``True`` when glibc accepted both settings (or the environment had set them), ``False``
        on a C library without ``mallopt`` (musl, macOS, Windows), where nothing changes.
    """
    pending = {name: option for name, option in _MALLOPT.items() if name not in os.environ}
    if not pending:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # symbols already loaded: no library search at start-up
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    accepted = [mallopt(option, int(ALLOCATOR_ENV[name])) == 1 for name, option in pending.items()]
    return all(accepted)  # every setting tried, even after a refusal
