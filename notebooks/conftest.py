"""nbval: start a notebook's kernel again when its start fails.

A Jupyter kernel now and then dies before it answers ``kernel_info`` on a loaded CI machine (a
known flake of jupyter_client/ipykernel, e.g. Infleqtion/client-superstaq#1129, "when I rerun
the task a minute or so later it works fine"); nbval then reports every cell of that notebook
as a setup error. Here a failed start is tried again, twice, after a pause, and each failure is
reported as a warning with its error, so a flake costs seconds and a real fault still fails with
the error of its last try. Only the kernel start is retried: a cell that fails is never rerun.
"""

from __future__ import annotations

import time
import warnings

import nbval.plugin

ATTEMPTS = 3
PAUSE_S = 10.0

_RunningKernel = nbval.plugin.RunningKernel


class RetryingKernel(_RunningKernel):
    """nbval's ``RunningKernel``, its start tried up to :data:`ATTEMPTS` times."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                super().__init__(*args, **kwargs)
                return
            except BaseException as err:  # a start failure is retried, an interrupt is not
                self._stop_half_started()
                if not isinstance(err, Exception):
                    raise
                warnings.warn(
                    f"kernel start {attempt}/{ATTEMPTS} failed: {type(err).__name__}: {err}",
                    stacklevel=2,
                )
                if attempt == ATTEMPTS:
                    raise
                time.sleep(PAUSE_S * attempt)

    def _stop_half_started(self) -> None:
        """Shut down a kernel that started but did not answer, so that no process is left."""
        km = getattr(self, "km", None)
        if km is None:
            return
        for stop in (self.kc.stop_channels, lambda: km.shutdown_kernel(now=True)):
            try:
                stop()
            except Exception:  # noqa: BLE001, S110 - a dead kernel may refuse; go on
                pass
        del self.km


nbval.plugin.RunningKernel = RetryingKernel
