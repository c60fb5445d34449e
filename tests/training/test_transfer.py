"""motionqc.training.transfer: class weights, the embedding cache, splits, the seed protocol, train-qc end to end.

`train_qc_cli` runs on real NIfTI files (the sample heads with graded noise, plus one broken file)
and a randomly initialised SFCN at the smoke geometry: it checks the plumbing and the report, and
the seed protocol is checked for accuracy on embeddings whose classes are separable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_nifti
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.class_weight import compute_class_weight

from motionqc.app.train_qc import train_qc_cli
from motionqc.data.bids import manifest_from_mrart
from motionqc.data.splits import stratified_split, subject_split
from motionqc.data.volumes import preprocess
from motionqc.models.encoder import save_encoder
from motionqc.models.qc_head import file_digest, load_qc_head
from motionqc.models.sfcn import SFCN
from motionqc.training.qc_runs import best_run, run_scratch_seeds, run_seeds, run_transfer_seeds
from motionqc.training.transfer import (
    QCRun,
    WeightedCE,
    class_weights,
    embed,
    train_qc,
    train_scratch,
    train_transfer,
)

SMOKE = {"spacing_mm": 4.0, "shape": (40, 48, 40)}


def test_class_weights_match_scikit_learn_balanced() -> None:
    y = np.array([0] * 3 + [1] * 17 + [2] * 40)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y)
    ours = class_weights(y).numpy()
    assert np.allclose(ours, ref / ref.mean(), atol=1e-6)
    absent = class_weights(np.array([1, 1, 2])).numpy()
    assert absent[0] == 0 and absent[2] > absent[1] > 0  # rarer class, larger weight


def test_weighted_ce_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
    w = class_weights(y.numpy())
    ref = torch.nn.functional.cross_entropy(logits, y, weight=w)
    assert torch.allclose(WeightedCE(w)(logits, y), ref)


def test_stratified_split_is_seeded_and_stratified() -> None:
    y = np.array([0] * 10 + [1] * 30 + [2] * 60)
    a, b = stratified_split(y, seed=3), stratified_split(y, seed=3)
    assert (a == b).all() and not (a == stratified_split(y, seed=4)).all()
    counts = pd.crosstab(a, y)
    expected = {"train": [6, 18, 36], "val": [2, 6, 12], "test": [2, 6, 12]}
    for name, per_class in expected.items():  # stratified: every class in proportion, +-1
        assert np.abs(counts.loc[name].to_numpy() - per_class).max() <= 1, counts
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(y, fractions=(0.5, 0.5, 0.5))


def _separable(n: int = 150, d: int = 20, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.15, 0.35, 0.5])
    centres = rng.normal(0, 3, (3, d))
    z = centres[y] + rng.normal(0, 1, (n, d))
    return torch.tensor(z, dtype=torch.float32), y


def test_seed_protocol_learns_separable_classes() -> None:
    z, y = _separable()
    split = stratified_split(y, seed=0)
    ids = [f"v{i}" for i in range(len(y))]
    preds, runs = run_transfer_seeds(z, y, split, ids, [0, 1], lr=3e-3)
    assert len(runs) == 2 and set(preds["seed"]) == {0, 1}
    assert list(preds.columns) == ["setting", "seed", "volume_id", "y_true", "y_pred"]
    assert set(preds["volume_id"]) == {ids[i] for i in np.flatnonzero(split == "test")}
    for _, rows in preds.groupby("seed"):
        assert balanced_accuracy_score(rows["y_true"], rows["y_pred"]) > 0.9
    again, _ = run_transfer_seeds(z, y, split, ids, [0, 1], lr=3e-3)
    pd.testing.assert_frame_equal(preds, again)  # seeded: same numbers on CPU
    with pytest.raises(ValueError, match="val split is empty"):
        run_transfer_seeds(z, y, np.where(split == "val", "train", split), ids, [0])


def test_scratch_seeds_share_the_protocol() -> None:
    # SFCN from random init per seed on the same split: the same table as the transfer runs.
    g = torch.Generator().manual_seed(0)
    y = np.array([0, 1, 2] * 6)
    images = torch.rand(len(y), 1, 32, 32, 32, generator=g) + torch.as_tensor(y).view(
        -1, 1, 1, 1, 1
    )
    split = stratified_split(y, seed=0)
    ids = [f"v{i}" for i in range(len(y))]
    kw = {"max_epochs": 1, "batch_size": 4}
    preds, runs = run_scratch_seeds(images, y, split, ids, [0, 1], **kw)
    assert len(runs) == 2 and set(preds["setting"]) == {"scratch"} and set(preds["seed"]) == {0, 1}
    assert list(preds.columns) == ["setting", "seed", "volume_id", "y_true", "y_pred"]
    assert set(preds["volume_id"]) == {ids[i] for i in np.flatnonzero(split == "test")}
    # Seeded: seed 1 alone, through run_seeds, gives the same predictions as in the 2-seed run.
    again, _ = run_seeds("scratch", images, y, split, ids, [1], predict_batch_size=8, **kw)
    pd.testing.assert_frame_equal(
        preds[preds["seed"] == 1].reset_index(drop=True), again.reset_index(drop=True)
    )
    with pytest.raises(ValueError, match="setting must be"):
        run_seeds("finetune", images, y, split, ids, [0])
    with pytest.raises(ValueError, match="setting must be"):  # before any work, seeds or not
        run_seeds("finetune", images, y, split, ids, [])


def test_a_settings_model_arguments_reach_the_model_and_the_rest_the_training() -> None:
    z, y = _separable(n=40, d=6)
    run = train_transfer(z, y, z, y, 0, hidden=4, dropout=0.25, max_epochs=3, batch_size=8)
    linears = [m for m in run.model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [4, 4, 3]
    assert [m.p for m in run.model.modules() if isinstance(m, torch.nn.Dropout)] == [0.25]
    assert len(run.history) == 3  # max_epochs went to the trainer
    x = torch.rand(6, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    yx = np.array([0, 1, 2] * 2)
    scratch = train_scratch(x, yx, x, yx, 0, channels=(2, 3, 2, 2, 2, 2), max_epochs=1)
    convs = [m for m in scratch.model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [m.out_channels for m in convs][:2] == [2, 3]
    with pytest.raises(TypeError, match="hidden"):  # the scratch SFCN has no hidden layer
        train_scratch(x, yx, x, yx, 0, hidden=4, max_epochs=1)
    with pytest.raises(ValueError, match="setting must be one of"):
        train_qc("finetune", z, y, z, y, 0)


def test_best_run_uses_validation_only() -> None:
    def run(*scores: float) -> QCRun:
        hist = [{"epoch": i, "val_balanced_accuracy": s} for i, s in enumerate(scores)]
        return QCRun(torch.nn.Identity(), hist)

    assert best_run([run(0.4, 0.5), run(0.7, 0.6), run(0.7)]) == 1


@pytest.fixture(scope="module")
def ratings(tmp_path_factory: pytest.TempPathFactory, sample: pd.DataFrame) -> Path:
    """18 rated NIfTI volumes (sample heads + graded noise, score 4 = clean) and one broken file."""
    root = tmp_path_factory.mktemp("ratings")
    rng = np.random.default_rng(0)
    rows = []
    for head in sample.itertuples():
        image = preprocess(head.path, 4.0, (40, 48, 40), normalise=False)
        data = image.data[0].numpy()
        for k, score in enumerate([1, 2, 3, 3, 4, 4]):
            noisy = data + rng.normal(0, (5 - score) * 0.08 * data.std(), data.shape)
            vid = f"{head.volume_id}_{k}"
            write_nifti(root / f"{vid}.nii.gz", noisy.astype(np.float32), image.affine)
            rows.append({"volume_id": vid, "path": f"{vid}.nii.gz", "qc_score": score})
    good = (root / f"{rows[0]['volume_id']}.nii.gz").read_bytes()
    (root / "broken.nii.gz").write_bytes(good[: len(good) // 3])
    rows.append({"volume_id": "broken", "path": "broken.nii.gz", "qc_score": 2})
    rows.append({"volume_id": "gone", "path": "gone.nii.gz", "qc_score": 3})  # no such file
    table = pd.DataFrame(rows).assign(dataset="lab", site="s1", subject=lambda d: d["volume_id"])
    path = root / "ratings.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def test_train_qc_end_to_end_on_nifti(tmp_path: Path, ratings: Path) -> None:
    torch.manual_seed(0)
    encoder = save_encoder(tmp_path / "encoder.pt", SFCN(), info={"note": "random"}, **SMOKE)
    out = tmp_path / "qc"
    # two rated files are broken or gone: the run stops before training, naming them ...
    with pytest.raises(ValueError, match="2 of 20 rated volume.*broken.nii.gz.*--skip-missing"):
        train_qc_cli(ratings, encoder, out, seeds=2)
    assert not (out / "qc_head.pt").exists()
    # ... and trains without them when told to
    results = train_qc_cli(ratings, encoder, out, seeds=2, skip_missing=True)
    seeds = pd.read_csv(results)
    assert list(seeds["setting"]) == ["transfer", "transfer"] and list(seeds["seed"]) == [0, 1]
    preds = pd.read_csv(out / "qc_predictions.tsv", sep="\t")
    by_sklearn = [
        balanced_accuracy_score(g["y_true"], g["y_pred"])
        for _, g in preds.groupby("seed", sort=True)
    ]
    assert np.allclose(by_sklearn, seeds.sort_values("seed")["balanced_accuracy"])
    assert "broken" not in set(preds["volume_id"])
    errors = json.loads((out / "errors.json").read_text())
    assert [e["volume_id"] for e in errors] == ["broken", "gone"]
    assert "broken.nii.gz" in errors[0]["error"] and "not found" in errors[1]["error"]
    assert (out / "qc_median.csv").is_file()
    head, meta = load_qc_head(out / "qc_head.pt", encoder)
    assert meta["info"]["seed"] in (0, 1) and meta["encoder_digest"] == file_digest(encoder)
    # The embedding cache is keyed by the encoder digest and reused by a re-run: same numbers.
    assert (out / f"embeddings_{file_digest(encoder)}.pt").is_file()
    train_qc_cli(ratings, encoder, out, seeds=2, skip_missing=True)
    pd.testing.assert_frame_equal(pd.read_csv(results), seeds)
    # Changed ratings in the same folder retrain: the head is not the finished run resumed.
    first = torch.load(out / "qc_head.pt", weights_only=True)["model"]
    changed = pd.read_csv(ratings, sep="\t")
    changed.loc[changed["qc_score"] == 3, "qc_score"] = 2
    changed_path = ratings.parent / "ratings_changed.tsv"
    changed.to_csv(changed_path, sep="\t", index=False)
    train_qc_cli(changed_path, encoder, out, seeds=2, skip_missing=True)
    second = torch.load(out / "qc_head.pt", weights_only=True)["model"]
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_embed_cache_keeps_computed_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SFCN().eval()
    images = torch.randn(3, 1, 40, 48, 40)
    cache = tmp_path / "emb.pt"
    first = embed(model, images, ["a", "b", "c"], cache=cache, progress=False)
    from motionqc.models.encoder import unit_range

    with torch.inference_mode():
        direct = model.features(unit_range(images))
    assert torch.allclose(first, direct, atol=1e-5)
    # Ids already cached are not recomputed: a different model returns the cached values.
    poisoned = SFCN().eval()
    for p in poisoned.parameters():
        p.data.fill_(0.0)
    again = embed(poisoned, images[[2, 0]], ["c", "a"], cache=cache, progress=False)
    assert torch.equal(again, first[[2, 0]])
    # A cache written before inputs were rescaled (its key names no input scaling) is not reused.
    torch.save({"pooled=False": {"a": torch.full_like(first[0], 9.0)}}, cache)
    fresh = embed(model, images[:1], ["a"], cache=cache, progress=False)
    assert torch.allclose(fresh, first[:1])


def test_inference_sees_the_training_intensity_range() -> None:
    from motionqc.models.encoder import predict_motion, unit_range

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 40, 48, 40, generator=g) * torch.tensor([1.0, 4.0, 250.0]).view(
        3, 1, 1, 1, 1
    )
    u = unit_range(x)
    assert torch.allclose(u.amin(dim=(1, 2, 3, 4)), torch.zeros(3))
    assert torch.allclose(u.amax(dim=(1, 2, 3, 4)), torch.ones(3))
    assert torch.allclose(unit_range(u), u)  # idempotent on the training range
    torch.manual_seed(0)
    model = SFCN().eval()
    # Mean-scaled and min-max inputs of the same volume give the same scores and embeddings.
    a, _ = predict_motion(model, x[:1] * 7.0 + 3.0)
    b, _ = predict_motion(model, x[:1])
    assert np.allclose(a, b, atol=1e-5)
    za = embed(model, x[:1] * 7.0 + 3.0, ["a"], progress=False)
    assert torch.allclose(za, embed(model, x[:1], ["a"], progress=False), atol=1e-5)


def test_qc_head_with_code_or_text_is_refused_in_one_line(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    bad = tmp_path / "qc_head.pt"
    torch.save({"format": "x", "payload": Payload()}, bad)
    with pytest.raises(ValueError, match="not loaded") as err:
        load_qc_head(bad)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "ran").exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match="not a QC head file") as err:
        load_qc_head(text)
    assert str(err.value).startswith(str(text)) and "\n" not in str(err.value)


def _variant(ratings: Path, tmp_path: Path, change) -> Path:
    table = pd.read_csv(ratings, sep="\t")
    table["path"] = [str(ratings.parent / p) for p in table["path"]]
    table = change(table[~table["volume_id"].isin(["broken", "gone"])].copy())
    out = tmp_path / "variant.tsv"
    table.to_csv(out, sep="\t", index=False)
    return out


def test_train_qc_refuses_ratings_it_cannot_train_on_honestly(
    tmp_path: Path, ratings: Path
) -> None:
    encoder = save_encoder(tmp_path / "encoder.pt", SFCN(channels=(4,) * 6), **SMOKE)
    single = _variant(ratings, tmp_path, lambda t: t.assign(qc_score=4))
    with pytest.raises(ValueError, match="least two classes"):
        train_qc_cli(single, encoder, tmp_path / "a", seeds=1)

    def same_path(t):
        t.iloc[1, t.columns.get_loc("path")] = t.iloc[0]["path"]
        return t

    with pytest.raises(ValueError, match="same file under several ids"):
        train_qc_cli(_variant(ratings, tmp_path, same_path), encoder, tmp_path / "b", seeds=1)
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes(
        Path(
            pd.read_csv(ratings, sep="\t")["path"].map(lambda p: ratings.parent / p)[0]
        ).read_bytes()
    )

    def same_content(t):
        t.iloc[1, t.columns.get_loc("path")] = str(copy)
        return t

    with pytest.raises(ValueError, match="identical files"):
        train_qc_cli(_variant(ratings, tmp_path, same_content), encoder, tmp_path / "c", seeds=1)
    one_class_train = _variant(
        ratings, tmp_path, lambda t: t.assign(split=np.where(t["qc_score"] == 4, "train", "test"))
    )
    with pytest.raises(ValueError, match="(single QC class|split is empty)"):
        train_qc_cli(one_class_train, encoder, tmp_path / "d", seeds=1)


def test_subject_split_keeps_each_subject_whole() -> None:
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"s{i:02d}" for i in range(30)], 3)  # three scans per person (MR-ART)
    y = rng.integers(0, 3, len(subjects))
    split = subject_split(y, subjects, seed=3)
    per_subject = pd.Series(split).groupby(subjects).nunique()
    assert (per_subject == 1).all()
    shares = pd.Series(split).value_counts(normalize=True)
    assert abs(shares["train"] - 0.6) < 0.1 and abs(shares["test"] - 0.2) < 0.1
    assert set(y[split == "train"]) == {0, 1, 2}
    assert list(subject_split(y, subjects, seed=3)) == list(split)  # seeded
    assert list(subject_split(y, subjects, seed=4)) != list(split)
    with pytest.raises(ValueError, match="needs 3"):
        subject_split([0, 1, 2, 0], ["a", "a", "b", "b"])


def test_train_qc_on_mrart_splits_by_subject(tmp_path: Path, mrart: Path) -> None:
    manifest = manifest_from_mrart(mrart)
    path = tmp_path / "mrart.tsv"
    manifest.to_csv(path, sep="\t", index=False)
    torch.manual_seed(0)
    encoder = save_encoder(tmp_path / "encoder.pt", SFCN(), info={"note": "random"}, **SMOKE)
    train_qc_cli(path, encoder, tmp_path / "qc", seeds=1)
    splits = pd.read_csv(tmp_path / "qc" / "splits.tsv", sep="\t")
    assert list(splits.columns) == ["volume_id", "subject", "split"]
    assert sorted(splits["volume_id"]) == sorted(manifest["volume_id"])
    assert (splits.groupby("subject")["split"].nunique() == 1).all()
    assert set(splits["split"]) == {"train", "val", "test"}
    # A given split that puts one person in two splits is refused, naming the subject.
    leaky = manifest.assign(split=["train", "test", "val"] * 9)
    leaky.to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="subject .* more than one split"):
        train_qc_cli(path, encoder, tmp_path / "qc2", seeds=1)


def test_manifest_qc_set_reads_the_ratings_and_splits_by_subject(
    tmp_path: Path, mrart: Path
) -> None:
    from motionqc.qc_task import qc_class
    from motionqc.stages.transfer import manifest_qc_set

    manifest = manifest_from_mrart(mrart)
    path = tmp_path / "mrart.tsv"
    manifest.drop(columns=["split"], errors="ignore").to_csv(path, sep="\t", index=False)
    images, table, errors = manifest_qc_set(path, SMOKE, seed=0)
    assert images.shape == (27, 1, 40, 48, 40) and errors == []
    assert (table.groupby("subject")["split"].nunique() == 1).all()
    assert set(table["split"]) == {"train", "val", "test"}
    ratings = manifest.set_index("volume_id")["qc_score"]
    assert table["qc_score"].tolist() == [int(ratings[v]) for v in table["volume_id"]]
    assert table["qc_class"].tolist() == [qc_class(s) for s in table["qc_score"]]
    # the authors' layout: only the QC task's roles, and their own split, used as given
    subjects = sorted(manifest["subject"].unique())
    chosen = dict(zip(subjects, ["train"] * 5 + ["val"] * 2 + ["test"] * 2, strict=True))
    authors = manifest.assign(role="transfer", split=manifest["subject"].map(chosen))
    authors.loc[authors.index[:3], "role"] = "synthetic_pool"
    authors.to_csv(path, sep="\t", index=False)
    _, given, _ = manifest_qc_set(path, SMOKE)
    assert len(given) == 24
    assert given["split"].tolist() == authors.loc[authors.index[3:], "split"].tolist()
    # the authors' split is by volume: a subject's later session in test is refused, or dropped
    leaky = authors.copy()
    moved = leaky.index[(leaky["split"] == "train") & (leaky["role"] == "transfer")][-1]
    leaky.loc[moved, "split"] = "test"
    leaky.to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="more than one split"):
        manifest_qc_set(path, SMOKE)
    _, kept, left_out = manifest_qc_set(path, SMOKE, drop_shared_subjects=True)
    subject = leaky.loc[moved, "subject"]
    assert [e["volume_id"] for e in left_out] == [leaky.loc[moved, "volume_id"]]
    assert left_out[0]["error"] == f"left out: subject {subject} is also in train"
    assert len(kept) == 23 and (kept.groupby("subject")["split"].nunique() == 1).all()


def test_seed_runs_are_keyed_by_their_settings(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    y = np.array([0, 1, 2] * 6)
    images = torch.rand(len(y), 1, 32, 32, 32, generator=g)
    split = np.array(["train"] * 10 + ["val"] * 4 + ["test"] * 4)
    ids = [f"v{i}" for i in range(len(y))]
    kw = {"max_epochs": 1, "batch_size": 4}
    run_scratch_seeds(
        images, y, split, ids, [0], run_root=tmp_path, channels=(4, 4, 4, 4, 4, 4), **kw
    )
    # Another architecture in the same folder starts its own runs (it resumed the other's: a crash).
    run_scratch_seeds(
        images, y, split, ids, [0], run_root=tmp_path, channels=(8, 8, 8, 8, 8, 8), **kw
    )
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("scratch_")]) == 2
