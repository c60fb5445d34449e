"""motionqc.data.splits on the poster authors' own tables (data_manifest/authors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from motionqc.data.splits import qc_split_table, site_split, split_by_group
from motionqc.paths import manifest_dir


@pytest.fixture(scope="module")
def ampscz() -> pd.DataFrame:
    return pd.read_csv(manifest_dir() / "authors" / "ampscz.tsv", sep="\t", dtype={"session": str})


def test_site_split_reproduces_the_authors_roles(ampscz: pd.DataFrame) -> None:
    sites = pd.read_csv(manifest_dir() / "authors" / "ampscz_sites.tsv", sep="\t")
    pretrain = sites.loc[sites["role"] == "pretrain", "site"]
    assert len(pretrain) == 26 and (sites["role"] == "finetune").sum() == 7
    known = ampscz[ampscz["site"].isin(sites["site"])]
    out = site_split(known, synthetic_sites=pretrain)
    pool = out[out["role"] == "synthetic_pool"]
    # every volume of a pretraining site is in the authors' synthetic pool or their extra test set
    authors_pretrain = ampscz["role"].isin(["synthetic_pool", "extra_test"])
    assert set(out.index[out["site_role"] == "pretrain"]) == set(ampscz.index[authors_pretrain])
    # "only best-rated volumes feed synthesis" gives the 348 score-4 volumes of those sites; the
    # authors' pool is 319 volumes (295 rated 4, 23 rated 3, 1 rated 5) and 53 rated 4 went to
    # their extra test set: documented in notebook 01.
    assert len(pool) == 348 and (pool["qc_score"] == 4).all()
    assert (ampscz["role"] == "synthetic_pool").sum() == 319
    assert (out.loc[out["site_role"] == "finetune", "role"] == "transfer").all()
    # the poster: 378 transfer volumes (196 + 182 added test volumes)
    assert (out["role"] == "transfer").sum() == 378


def test_site_split_is_seeded(ampscz: pd.DataFrame) -> None:
    a = site_split(ampscz, n_synthetic_sites=20, seed=3)
    b = site_split(ampscz, n_synthetic_sites=20, seed=3)
    c = site_split(ampscz, n_synthetic_sites=20, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert a["site"][a["site_role"] == "pretrain"].nunique() == 20
    assert not a["site_role"].equals(c["site_role"])
    with pytest.raises(ValueError, match="exactly one"):
        site_split(ampscz)
    with pytest.raises(ValueError, match="not in the manifest"):
        site_split(ampscz, synthetic_sites=["XX_absent"])


def test_split_by_group_keeps_subjects_whole(ampscz: pd.DataFrame) -> None:
    split = split_by_group(ampscz, seed=1)
    assert split.notna().all()
    assert (ampscz.assign(split=split).groupby("subject")["split"].nunique() == 1).all()
    fractions = split.value_counts(normalize=True)
    np.testing.assert_allclose(fractions[["train", "val", "test"]], [0.7, 0.15, 0.15], atol=0.02)
    assert split.equals(split_by_group(ampscz, seed=1))
    assert not split.equals(split_by_group(ampscz, seed=2))


def test_qc_split_table_matches_the_poster(ampscz: pd.DataFrame) -> None:
    transfer = ampscz[ampscz["role"].isin(["transfer", "transfer_test_added"])].copy()
    # the authors' files: transfer train / val and (test + added test) — the poster's Train / Test / Validation
    transfer["poster_split"] = transfer["split"].map(
        {"train": "Train", "val": "Test", "test": "Validation"}
    )
    table = qc_split_table(transfer, split="poster_split", order=["Train", "Test", "Validation"])
    assert table[["1/2", "3", "4"]].values.tolist() == [[7, 38, 70], [1, 12, 26], [9, 90, 125]]
    assert table["total"].tolist() == [115, 39, 224]
