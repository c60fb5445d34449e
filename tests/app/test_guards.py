"""The encoder record of a derivative folder, and names below folders of another encoding."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from motionqc.app.guards import ENCODER_RECORD, claim_encoder
from motionqc.app.loading import name_problem


def _claim(folder: str, sha: str, barrier, results) -> None:
    barrier.wait()
    try:
        claim_encoder(Path(folder), {"sha256": sha, "input_intensity": "percentile"})
        results.put((sha, "claimed"))
    except ValueError as exc:
        results.put((sha, str(exc)))


def test_of_shards_claiming_at_once_with_two_encoders_exactly_one_wins(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    for attempt in range(5):
        folder = tmp_path / f"out{attempt}"
        folder.mkdir()
        barrier, results = ctx.Barrier(4), ctx.Queue()
        shas = ["a" * 64, "b" * 64, "a" * 64, "b" * 64]
        procs = [ctx.Process(target=_claim, args=(str(folder), s, barrier, results)) for s in shas]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        outcome = [results.get(timeout=5) for _ in procs]
        winners = {sha for sha, said in outcome if said == "claimed"}
        assert len(winners) == 1, outcome  # one encoder's shards go on, the other's are refused
        refused = [said for sha, said in outcome if sha not in winners]
        assert len(refused) == 2 and all("another encoder" in r for r in refused)
        assert not [f for f in os.listdir(folder) if f != ENCODER_RECORD]  # no temp file left


def test_an_unreadable_encoder_record_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / ENCODER_RECORD).write_text("{half")
    with pytest.raises(ValueError, match="unreadable encoder record") as err:
        claim_encoder(tmp_path, {"sha256": "a" * 64, "input_intensity": "percentile"})
    assert "\n" not in str(err.value)


def test_a_folder_of_another_encoding_above_the_file_does_not_refuse_it(tmp_path: Path) -> None:
    parent = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xe9tude")  # Latin-1 'étude'
    path = Path(parent) / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert name_problem(path, "sub-01_T1w") is None
    own = Path(parent) / "sub-01" / "anat" / os.fsdecode(b"sub-01_acq-caf\xe9_T1w.nii.gz")
    assert "not UTF-8" in name_problem(own, os.fsdecode(b"sub-01_acq-caf\xe9_T1w"))
