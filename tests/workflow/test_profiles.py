"""motionqc.profiles and motionqc.paths."""

from __future__ import annotations

import pytest

from motionqc import paths
from motionqc.profiles import PROFILES, get_profile


def test_profile_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTIONQC_PROFILE", raising=False)
    assert get_profile().name == "sample"
    monkeypatch.setenv("MOTIONQC_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("paper").shape == (160, 192, 160)  # SFCN's 1 mm input grid
    monkeypatch.setenv("MOTIONQC_PROFILE", "huge")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile()


def test_profiles_scale_down() -> None:
    smoke, sample, paper = (PROFILES[n] for n in ("smoke", "sample", "paper"))
    for small, big in ((smoke, sample), (sample, paper)):
        assert small.spacing_mm > big.spacing_mm
        assert all(a < b for a, b in zip(small.shape, big.shape, strict=True))
    assert sample.replace(seed=3).seed == 3 and sample.seed == 0
    with pytest.raises(TypeError):
        sample.replace(unknown=1)


def test_paths_resolve_from_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    root = paths.repo_root()
    assert (root / "data_manifest" / "sample.tsv").is_file() and (root / "notebooks").is_dir()
    monkeypatch.chdir(tmp_path)  # papermill runs notebooks from elsewhere
    assert paths.repo_root() == root
    monkeypatch.setenv("MOTIONQC_ROOT", str(tmp_path))
    with pytest.raises(RuntimeError, match="not a motionqc checkout"):
        paths.repo_root()


def test_smoke_runs_do_not_overwrite_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTIONQC_PROFILE", "sample")
    assert paths.figures_dir() == paths.repo_root() / "figures"
    monkeypatch.setenv("MOTIONQC_PROFILE", "smoke")
    assert paths.tables_dir() == paths.repo_root() / "build" / "figures" / "smoke" / "tables"
