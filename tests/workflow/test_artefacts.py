"""motionqc.artefacts: the files passed between notebooks are named in one place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from motionqc import artefacts, paths
from motionqc.models.encoder import default_encoder_path

NOTEBOOKS = sorted((paths.repo_root() / "notebooks").glob("*.ipynb"))


def _code(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_artefacts_of_a_profile_are_distinct_files_of_that_profile(tmp_path, monkeypatch):
    found = [
        artefacts.encoder("p"),
        artefacts.qc_set("p"),
        artefacts.qc_head("p"),
        artefacts.embedding_cache("p", "abc"),
        *(artefacts.resources("p", s) for s in artefacts.STAGES),
    ]
    assert len(set(found)) == len(found)
    assert all(f.is_relative_to(paths.checkpoints_dir() / "p") for f in found)
    assert artefacts.encoder("p") != artefacts.encoder("q")
    assert artefacts.qc_set("p") != artefacts.qc_set("q")
    assert default_encoder_path("p") == artefacts.encoder("p")
    monkeypatch.setenv("MOTIONQC_CHECKPOINTS", str(tmp_path / "run"))
    assert artefacts.qc_set("p") == tmp_path / "run" / "p" / "qc_set.pt"
    with pytest.raises(ValueError, match="unknown stage 'pretraining'"):
        artefacts.stage_dir("p", "pretraining")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_take_hand_overs_from_artefacts(nb: Path):
    code = _code(nb)
    # no notebook builds a path into checkpoints/ or the QC set's file itself
    assert "checkpoints_dir()" not in code
    assert not re.search(r"qc_demo_set_|embeddings_|\"resources\.json\"|\"qc_head\.pt\"", code)
