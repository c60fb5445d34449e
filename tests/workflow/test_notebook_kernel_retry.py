"""notebooks/conftest.py: nbval tries a failed kernel start again and then gives up loudly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbval.kernel
import nbval.plugin
import pytest
from jupyter_client.kernelspec import NoSuchKernel

CONFTEST = Path(__file__).resolve().parents[2] / "notebooks" / "conftest.py"


@pytest.fixture
def retrying(monkeypatch):
    monkeypatch.setattr(nbval.plugin, "RunningKernel", nbval.plugin.RunningKernel)  # restored after
    spec = importlib.util.spec_from_file_location("notebooks_conftest", CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PAUSE_S", 0.0)
    assert nbval.plugin.RunningKernel is module.RetryingKernel  # what nbval's setup will call
    return module


def test_a_kernel_that_dies_once_is_started_again(retrying, monkeypatch, tmp_path):
    real = nbval.kernel.start_new_kernel
    calls = []

    def dies_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return real(*args, **kwargs)

    monkeypatch.setattr(nbval.kernel, "start_new_kernel", dies_first)
    with pytest.warns(UserWarning, match=r"kernel start 1/3 failed: RuntimeError: Kernel died"):
        kernel = retrying.RetryingKernel(nbval.kernel.CURRENT_ENV_KERNEL_NAME, cwd=str(tmp_path))
    try:
        assert len(calls) == 2
        assert kernel.is_alive()
        msg_id = kernel.execute_cell_input("print(6 * 7)", allow_stdin=False)
        kernel.await_idle(msg_id, 60)
    finally:
        kernel.stop()


def test_a_kernel_that_never_starts_fails_with_its_error(retrying):
    with pytest.warns(UserWarning) as record, pytest.raises(NoSuchKernel):
        retrying.RetryingKernel("no-such-kernel-here")
    starts = [str(w.message) for w in record if "kernel start" in str(w.message)]
    assert [s.split(" failed")[0] for s in starts] == [f"kernel start {i}/3" for i in (1, 2, 3)]
