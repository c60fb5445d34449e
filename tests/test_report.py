"""motionqc.report: the HTML report, checked in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from motionqc.data import load_volume
from motionqc.report import mosaic_png, write_report


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "install", "-y", "-qq", "chromium"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium"],
    ):
        if (
            subprocess.run(cmd, capture_output=True, env=env, check=False, timeout=900).returncode
            == 0
            and cmd[1] == "install"
        ):
            break
    return shutil.which("chromium")


def require_chromium() -> str:
    """Chromium's path; without it the test fails under CI (``CI`` set) and is skipped elsewhere."""
    browser = _chromium()
    if browser is None:
        message = "Chromium is not installed and cannot be installed here (needs root and apt-get)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the report in a real browser")
        pytest.skip(message)
    return browser


def _table(sample: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, bytes]]:
    names = [f"sub-{v}_T1w" for v in sample["volume_id"]]
    mosaics = {
        n: mosaic_png(np.asarray(load_volume(p).dataobj))
        for n, p in zip(names, sample["path"], strict=True)
    }
    rows = [
        {
            "bids_name": n,
            "motion_mm": 0.3 + i,
            "motion_std": 0.1,
            "qc_class": "4",
            "status": "ok",
            "error": "",
        }
        for i, n in enumerate(names)
    ]
    rows.append(
        {
            "bids_name": "sub-broken_T1w",
            "status": "error",
            "error": "sub-broken_T1w.nii.gz: unreadable or truncated NIfTI",
        }
    )
    return pd.DataFrame(rows), mosaics


def test_report_lists_every_volume_ranked(tmp_path: Path, sample: pd.DataFrame) -> None:
    table, mosaics = _table(sample)
    html = write_report(table, tmp_path / "report.html", mosaics).read_text()
    names = table["bids_name"].tolist()
    positions = [html.index(n) for n in names[:-1]]
    assert positions == sorted(positions, reverse=True)  # worst motion first
    assert html.index(names[-1]) > max(positions) and "unreadable or truncated" in html
    assert (
        html.count("data:image/png;base64,") == len(mosaics) + 1
    )  # mosaics + group plot, all embedded
    assert "http://" not in html and "https://" not in html  # self-contained


def test_report_renders_in_headless_chromium(tmp_path: Path, sample: pd.DataFrame) -> None:
    browser = require_chromium()
    table, mosaics = _table(sample)
    page = write_report(table, tmp_path / "report.html", mosaics)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for name in table["bids_name"]:
        assert name in dom  # the rendered DOM lists every volume
    assert dom.count('<tr class="ok">') == len(mosaics) and dom.count('<tr class="error">') == 1
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (1600, 1200) and image.std() > 10  # a real page, not a blank one
