"""motionqc.app.report: the HTML report, checked in headless Chromium."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cdp import HEADLESS_FLAGS, Browser

from motionqc.app.pictures import bins_svg, mosaic_png, views_png
from motionqc.app.report import RATING_COLUMNS, write_report
from motionqc.data.volumes import load_volume, preprocess


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
    flags = [*HEADLESS_FLAGS, "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for name in table["bids_name"]:
        assert name in dom  # the rendered DOM lists every volume
    assert dom.count('<tr class="vol') == len(mosaics) and dom.count('<tr class="error">') == 1
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


def test_views_show_every_voxel_of_the_original_slices() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    volume = rng.uniform(0, 1, (30, 40, 20)).astype(np.float32)
    image = np.asarray(Image.open(io.BytesIO(views_png(volume, (1.0, 1.0, 2.0), n_slices=3))))
    # three rows (sagittal 20x2 = 40 rows tall after making pixels square, coronal 40, axial 40)
    # of three slices each, a 6-px tick column and 2-px gaps: no slice is thumbnailed
    assert image.shape[0] == 40 + 40 + 40 + 3 * 3
    assert image.shape[1] == 6 + max(3 * 40 + 2 * 2, 3 * 30 + 2 * 2, 3 * 30 + 2 * 2)
    with pytest.raises(ValueError, match="3D"):
        views_png(volume[0])


def test_bins_chart_marks_the_prediction() -> None:
    p = np.zeros(50)
    p[10] = 1.0
    svg = bins_svg(p, (-0.8, 4.8), value=0.5)
    assert svg.count("<rect") == 50 and 'stroke="#c0392b"' in svg
    # the red line at 0.5 mm: (0.5 + 0.8) / 5.6 of the 200 px width
    assert f'x1="{(0.5 + 0.8) / 5.6 * 200:.1f}"' in svg


RATINGS = [2, 4, 1, 3, 4, 2, 3, 4, 1, 3, 4, 2, 3, 4, 3]  # 5 of each QC class: {1,2}, 3, 4


@pytest.fixture(scope="module")
def rated_study(tmp_path_factory: pytest.TempPathFactory, sample: pd.DataFrame):
    """15 subjects (the sample heads at 2 mm, shifted so each file differs), scored with a
    random smoke encoder: a BIDS folder, its derivatives and the encoder."""
    import torch
    from conftest import write_nifti

    from motionqc.app.scoring import run_participant
    from motionqc.models.encoder import save_encoder
    from motionqc.models.sfcn import SFCN

    root = tmp_path_factory.mktemp("rated")
    bids = root / "bids"
    heads = [preprocess(p, 2.0, (80, 96, 80), normalise=False) for p in sample["path"].tolist()[:3]]
    for i in range(len(RATINGS)):
        head = heads[i % len(heads)]
        data = np.roll(head.data[0].numpy(), i // 3, axis=0)
        write_nifti(bids / f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz", data, head.affine)
    (bids / "dataset_description.json").write_text('{"Name": "rated", "BIDSVersion": "1.9.0"}')
    torch.manual_seed(0)
    encoder = save_encoder(
        root / "encoder.pt", SFCN(), info={"note": "random"}, spacing_mm=4.0, shape=(40, 48, 40)
    )
    out = root / "derivatives"
    run_participant(bids, out, encoder, device="cpu", num_workers=0, threads=2, progress=False)
    return bids, out, encoder


def test_rate_in_a_real_browser_then_train_qc(tmp_path: Path, rated_study) -> None:
    """Open the report in headless Chromium, rate with the keyboard, reload, export, train-qc."""

    from motionqc.app.cli import main

    bids, out, encoder = rated_study
    table = pd.read_csv(out / "group_T1w.tsv", sep="\t")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = Browser(require_chromium(), tmp_path / "profile", downloads)
    try:
        browser.open((out / "report.html").as_uri())
        order = browser.eval(
            "Array.from(document.querySelectorAll('tr.vol')).map(r => r.dataset.name)"
        )
        expected = table.sort_values("motion_mm", ascending=False)["bids_name"].tolist()
        assert order == expected  # worst first
        assert browser.eval("document.getElementById('progress').textContent") == "rated 0 / 15"
        browser.press(str(RATINGS[0]))  # rates the first volume and moves on
        browser.press(str(RATINGS[1]))
        browser.press("c")  # a comment on the third volume, then leave the box
        browser.send("Input.insertText", {"text": "ghosting\tin the\nfrontal lobe"})
        browser.send(
            "Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape"}
        )
        browser.reload()  # ratings and comment are kept by the browser
        checked = browser.eval(
            "Array.from(document.querySelectorAll('tr.vol')).map(r =>"
            " [(r.querySelector('input:checked') || {}).value || '', r.querySelector('textarea').value])"
        )
        assert checked[0] == [str(RATINGS[0]), ""] and checked[1] == [str(RATINGS[1]), ""]
        assert checked[2] == ["", "ghosting\tin the\nfrontal lobe"]
        assert all(c == ["", ""] for c in checked[3:])
        assert browser.eval("document.getElementById('progress').textContent") == "rated 2 / 15"
        browser.click("#rater")
        browser.send("Input.insertText", {"text": "rater A"})
        browser.send(
            "Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape"}
        )
        browser.press("n")
        browser.press("n")  # to the third volume, then rate the rest in order
        for rating in RATINGS[2:]:
            browser.press(str(rating))
        assert browser.eval("document.getElementById('progress').textContent") == "rated 15 / 15"
        # the threshold flags the volumes at or above it
        threshold = float(table["motion_mm"].median())
        browser.eval(
            f"(() => {{ const t = document.getElementById('threshold'); t.value = '{threshold}';"
            " t.dispatchEvent(new Event('input')); })()"
        )
        flagged = browser.eval("document.querySelectorAll('tr.vol.flagged').length")
        assert flagged == int((table["motion_mm"] >= threshold).sum())
        browser.click("th[data-sort=subject]")  # sorting keeps every row and its rating
        names = browser.eval(
            "Array.from(document.querySelectorAll('tr.vol')).map(r => r.dataset.name)"
        )
        assert names == sorted(expected)
        browser.eval("window.scrollTo(0, 0)")
        shot = browser.screenshot(tmp_path / "report_ratings.png")
        browser.click("#export")
        browser.wait_download()
    finally:
        browser.close()
    artefacts = Path(os.environ.get("MOTIONQC_TEST_ARTIFACTS", Path(__file__).parents[2] / "build"))
    artefacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artefacts / "report_ratings.png")  # the screenshot of a rated report
    from PIL import Image

    assert np.asarray(Image.open(shot).convert("L"), dtype=float).std() > 10

    (exported,) = downloads.glob("*_ratings.tsv")
    ratings = pd.read_csv(exported, sep="\t", dtype=str, keep_default_na=False)
    assert tuple(ratings.columns) == RATING_COLUMNS
    got = dict(zip(ratings["bids_name"], ratings["rating"].astype(int), strict=True))
    assert got == dict(zip(expected, RATINGS, strict=True))
    comment = ratings.set_index("bids_name").loc[expected[2], "comment"]
    assert comment == "ghosting in the frontal lobe"  # tabs and newlines cannot break the TSV
    assert set(ratings.loc[ratings["bids_name"].isin(expected[2:]), "rater"]) == {"rater A"}
    assert pd.to_datetime(ratings["timestamp"]).notna().all()

    qc = tmp_path / "qc"
    args = ["train-qc", "--manifest", str(exported), "--bids-dir", str(bids), str(qc)]
    assert main([*args, "--checkpoint", str(encoder), "--seeds", "2"]) == 0
    manifest = pd.read_csv(qc / "manifest.tsv", sep="\t")
    assert dict(zip(manifest["bids_name"], manifest["qc_score"], strict=True)) == got
    assert (qc / "qc_head.pt").is_file() and len(pd.read_csv(qc / "qc_results.csv")) == 2
