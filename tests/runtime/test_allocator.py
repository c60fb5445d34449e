"""glibc malloc settings: freed blocks are reused instead of being faulted in again."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env_without_allocator_settings

from motionqc.paths import repo_root
from motionqc.runtime import allocator

# A fresh interpreter allocates and frees a 64 MiB block eight times, writing every page each
# time, and prints the minor page faults that took.
PROBE = """
import resource, sys
if sys.argv[1] == "mallopt":
    from motionqc.runtime.allocator import keep_freed_memory
    assert keep_freed_memory(), "mallopt refused the settings"
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    block = bytearray(64 << 20)  # zero-filled: every page is written
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_64_MIB = (64 << 20) // os.sysconf("SC_PAGE_SIZE")

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)


def _faults(mode: str, extra_env: dict[str, str]) -> int:
    env = env_without_allocator_settings() | extra_env
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@glibc_only
def test_default_glibc_faults_every_round_in_again():
    """The baseline the settings fix: each 64 MiB block is mmapped and unmapped, 8 × its pages."""
    assert _faults("none", {}) >= 7 * PAGES_64_MIB


@glibc_only
@pytest.mark.parametrize("how", ["environment", "mallopt"])
def test_freed_memory_is_reused(how):
    """With the settings, only the first round faults the block in (environment or mallopt)."""
    if how == "environment":
        faults = _faults("none", allocator.ALLOCATOR_ENV)
    else:
        faults = _faults("mallopt", {})
    assert faults < 2 * PAGES_64_MIB, f"{faults} faults for 8 rounds of {PAGES_64_MIB} pages"


def test_set_env_keeps_values_already_set():
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    assert allocator.set_env(env) == {
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
    }
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(allocator.TRIM_THRESHOLD)


def test_makefile_sets_the_same_values_for_the_tests():
    """`make test` cannot import the package before the venv exists: it spells the values out."""
    text = (repo_root() / "Makefile").read_text()
    line = re.search(r"^ALLOCATOR_ENV := (.+)$", text, flags=re.M)
    assert line, "Makefile has no ALLOCATOR_ENV line"
    assert dict(item.split("=", 1) for item in line.group(1).split()) == allocator.ALLOCATOR_ENV


def test_thresholds_fit_mallopt_int():
    """``mallopt`` takes a C int: a larger value would wrap around."""
    assert 0 < allocator.MMAP_THRESHOLD <= 2**31 - 1
    assert 0 < allocator.TRIM_THRESHOLD <= 2**31 - 1


def test_runner_gives_kernels_the_settings(tmp_path: Path):
    """A notebook run by the runner (a real kernel) sees the settings in its environment."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    names = sorted(allocator.ALLOCATOR_ENV)
    nb.cells.append(
        nbformat.v4.new_code_cell(f"import os; print([os.environ.get(n) for n in {names!r}])")
    )
    path = tmp_path / "env_probe.ipynb"
    nbformat.write(nb, path)
    env = env_without_allocator_settings()
    subprocess.run(
        [sys.executable, "-m", "motionqc.runner", "--inplace", "--profile", "smoke", str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    printed = nbformat.read(path, as_version=4).cells[0].outputs[0]["text"].strip()
    assert printed == repr([allocator.ALLOCATOR_ENV[n] for n in names])


def test_restart_with_env_reexecutes_with_the_settings(tmp_path: Path):
    """A script started without the settings is replaced by one that has them (and runs once)."""
    script = tmp_path / "restart_probe.py"
    names = sorted(allocator.ALLOCATOR_ENV)
    script.write_text(
        "import os\n"
        "from motionqc.runtime.allocator import restart_with_env\n"
        "restart_with_env()\n"
        f"print([os.environ.get(n) for n in {names!r}])\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        env=env_without_allocator_settings(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == repr([allocator.ALLOCATOR_ENV[n] for n in names])
