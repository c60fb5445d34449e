"""Resource monitor on CPU: JSON fields, null power, peak RSS of self and of child processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import env_without_allocator_settings

from motionqc.runtime.resources import ResourceMonitor, device_name, rss_bytes

MB = 1 << 20


def _fresh(body: str, tmp_path) -> dict:
    """Run ``body`` (indented into a ``with ResourceMonitor(...) as mon:`` block) in a new process.

    A process that ran earlier tests keeps freed memory resident (the allocator does not return
    it), so a new allocation there may not grow the RSS at all: the memory tests measure in a
    fresh interpreter, as each notebook runs in a fresh kernel. That interpreter runs with glibc's
    default allocator (the settings of ``motionqc.runtime.allocator``, which ``make test`` exports, keep
    freed memory resident on purpose, and some checks here watch memory being given back).
    """
    import textwrap

    code = (
        "import json, mmap, subprocess, sys, time\n"
        "import numpy as np\n"
        "from motionqc.runtime.resources import ResourceMonitor\n"
        "MB = 1 << 20\n"
        "def touched(n_bytes):  # a new buffer with every page written (resident)\n"
        "    block = bytearray(n_bytes)\n"
        "    for i in range(0, n_bytes, 4096):\n"
        "        block[i] = 1\n"
        "    return block\n"
        "pre = {}\n" + textwrap.dedent(body)
    )
    script = tmp_path / "probe.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env_without_allocator_settings(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_record_fields_and_null_power(tmp_path):
    path = tmp_path / "run" / "resources.json"
    with ResourceMonitor(path, device="cpu", profile="smoke", label="unit", extra={"k": 1}) as mon:
        time.sleep(0.05)
    rec = json.loads(path.read_text())
    assert rec == json.loads(json.dumps(mon.record))
    assert rec["device"] == "cpu" and rec["device_name"] == device_name("cpu")
    assert rec["profile"] == "smoke" and rec["label"] == "unit" and rec["extra"] == {"k": 1}
    assert rec["torch_version"] == torch.__version__
    assert rec["wall_time_s"] >= 0.05
    assert rec["start_time"] < rec["end_time"]
    # No GPU: power and CUDA fields are null, not zero.
    for key in ("max_power_w", "mean_power_w", "energy_j", "cuda_max_allocated_bytes"):
        assert rec[key] is None
    assert rec["n_power_samples"] == 0
    assert rec["peak_memory_kind"] == "peak_rss"
    assert rec["peak_memory_bytes"] == rec["peak_rss_bytes"] >= rss_bytes()[0] // 2
    assert rec["status"] == "ok"


def test_peak_rss_grows_with_a_big_array(tmp_path):
    rec = _fresh(
        """
        from motionqc.runtime.resources import rss_bytes
        with ResourceMonitor(device="cpu", interval_s=0.02) as small:
            time.sleep(0.05)
        with ResourceMonitor(device="cpu", interval_s=0.02) as big:
            a = np.ones(150 * MB // 8)  # 150 MB, every page touched
            time.sleep(0.1)
            del a
        print(json.dumps({"small": small.record["peak_rss_bytes"],
                          "big": big.record["peak_rss_bytes"], "now": rss_bytes()[0]}))
        """,
        tmp_path,
    )
    assert rec["big"] - rec["small"] > 120 * MB
    # Freed before exit: the peak outlives the array.
    assert rec["big"] > rec["now"] + 100 * MB


def test_a_process_without_torch_is_measured_without_importing_it(tmp_path):
    # Importing torch inside the monitor would add hundreds of MB to the memory being measured.
    rec = _fresh(
        """
        with ResourceMonitor(device="cpu", interval_s=0.02) as mon:
            a = np.ones(20 * MB // 8)
        print(json.dumps({"torch": "torch" in sys.modules, **mon.record}))
        """,
        tmp_path,
    )
    assert rec["torch"] is False
    assert rec["device"] == "cpu" and rec["peak_memory_kind"] == "peak_rss"
    assert rec["num_threads"] is None and rec["max_power_w"] is None
    assert isinstance(rec["torch_version"], str) and rec["torch_version"]


def test_peak_rss_counts_child_processes():
    code = "import time; x = b'1' * (200 << 20); time.sleep(1.0)"
    with ResourceMonitor(device="cpu", interval_s=0.05) as mon:
        proc = subprocess.Popen([sys.executable, "-c", code])
        proc.wait(timeout=60)
    assert mon.record["peak_rss_children_bytes"] > 180 * MB
    assert mon.record["peak_rss_bytes"] >= mon.record["peak_rss_sampled_bytes"] > 180 * MB


def test_error_inside_block_still_writes(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(RuntimeError):
        with ResourceMonitor(path, device="cpu"):
            raise RuntimeError("boom")
    assert json.loads(path.read_text())["status"] == "error: RuntimeError"


def test_bad_arguments():
    with pytest.raises(ValueError, match="interval_s"):
        ResourceMonitor(interval_s=0)
    with pytest.raises(ValueError, match="not finished"):
        ResourceMonitor().write("x.json")


def test_memory_added_by_the_run_is_recorded(tmp_path):
    rec = _fresh(
        """
        with ResourceMonitor(device="cpu", interval_s=0.01) as mon:
            block = touched(64 * MB)
            mon.sample_now()
        print(json.dumps(mon.record))
        """,
        tmp_path,
    )
    assert rec["rss_at_entry_bytes"] > 0
    assert rec["peak_rss_increase_bytes"] >= 48 * MB
    assert rec["peak_rss_increase_bytes"] <= rec["peak_rss_bytes"]


def test_memory_added_is_not_hidden_by_a_child_exiting(tmp_path):
    # A child alive at entry (a worker of earlier work) that exits during the run must not
    # cancel what this process allocated.
    rec = _fresh(
        """
        code = "import time; x = b'1' * (150 << 20); print('ready', flush=True); time.sleep(30)"
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        with ResourceMonitor(device="cpu", interval_s=0.01) as mon:
            child.kill()
            child.wait(timeout=30)
            block = touched(64 * MB)
            mon.sample_now()
        print(json.dumps(mon.record))
        """,
        tmp_path,
    )
    assert rec["rss_at_entry_bytes"] > 150 * MB
    assert rec["peak_rss_increase_bytes"] >= 48 * MB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon is read from /proc")
def test_memory_added_is_not_hidden_by_dropped_file_pages(tmp_path):
    # The CI failure: resident pages of mapped files (libraries) dropped during the run hid an
    # equal new allocation from the total RSS. Unmapping a resident file mapping does the same,
    # deterministically: the total RSS stays flat while 64 MiB of heap is added.
    path = tmp_path / "mapped.bin"
    path.write_bytes(b"\1" * (64 * MB))
    rec = _fresh(
        f"""
        with open({str(path)!r}, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) == 64 * MB // 4096  # resident
        with ResourceMonitor(device="cpu", interval_s=0.01) as mon:
            mapped.close()
            block = touched(64 * MB)
            mon.sample_now()
        print(json.dumps(mon.record))
        """,
        tmp_path,
    )
    assert rec["peak_anon_bytes"] - rec["anon_at_entry_bytes"] >= 60 * MB
    assert rec["peak_rss_increase_bytes"] >= 60 * MB
