"""The released encoder's recipe (motionqc.training.recipe) and release (motionqc.training.release), at smoke scale."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchio as tio
from conftest import CodePayload, ellipsoid_head

from motionqc.data.volumes import preprocess
from motionqc.evaluation import encoder_test
from motionqc.models.encoder import (
    EncoderError,
    load_encoder,
    save_encoder,
    scale_input,
    unit_range,
)
from motionqc.models.sfcn import SFCN
from motionqc.models.soft_labels import BIN_RANGE, bin_centers
from motionqc.physics.motion import rigid_matrices
from motionqc.physics.score import SCORE_CONVENTION, motion_score, volume_center
from motionqc.stages import pretrain as stage
from motionqc.synthetic import augment as augmentation
from motionqc.synthetic import pool as motion_pool
from motionqc.training import recipe, release

SMOKE = recipe.RECIPES["smoke"]


def _head(seed=0, shape=(40, 48, 40), spacing=4.0):
    """A smooth ellipsoid 'head' with texture, as a torchio image."""
    return ellipsoid_head(seed, shape, spacing)


@pytest.fixture
def sources():
    return {"a~0": _head(0), "a~1": _head(1), "b~0": _head(2), "b~1": _head(3)}


def test_percentile_scaling_ignores_a_few_bright_voxels():
    x = torch.rand(2, 1, 20, 24, 20)
    spiked = x.clone()
    spiked[0, 0, 0, 0, :3] = 1000.0  # three voxels of 9,600
    pct = scale_input(spiked, "percentile")
    # min-max is ruined by the spike, the percentile scaling is not
    assert float(unit_range(spiked)[0].median()) < 0.01
    assert abs(float(pct[0].median()) - 0.5) < 0.02
    flat = spiked[1].flatten().numpy()
    lo, hi = np.percentile(flat, [0.5, 99.5])
    expected = (spiked[1].numpy() - lo) / (hi - lo)
    assert np.allclose(pct[1].numpy(), expected, atol=2e-3)
    with pytest.raises(ValueError, match="input scaling"):
        scale_input(x, "zscore")


def test_augment_batch_is_seeded_and_draws_new_intensities():
    x = torch.rand(3, 1, 20, 24, 20)
    a = augmentation.augment_batch(x, torch.Generator().manual_seed(1), SMOKE.augment)
    b = augmentation.augment_batch(x, torch.Generator().manual_seed(1), SMOKE.augment)
    c = augmentation.augment_batch(x, torch.Generator().manual_seed(2), SMOKE.augment)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # every output is scaled as inference scales: percentiles at 0 and 1
    again = scale_input(a, "percentile")
    assert torch.allclose(again, a, atol=1e-4)


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    v = torch.rand(18, 22, 16, generator=torch.Generator().manual_seed(0))
    for sigma in (0.6, 1.0, 1.7):
        ref = gaussian_filter(v.double().numpy(), sigma, mode="nearest", truncate=3.0)
        assert np.allclose(augmentation.gaussian_blur(v, sigma).numpy(), ref, atol=1e-5), sigma
    assert torch.equal(augmentation.gaussian_blur(v, 0.0), v)
    for sigmas in ((0.0, 1.3, 0.0), (0.7, 0.0, 2.1), (1.0, 0.5, 1.5)):  # one per axis
        ref = gaussian_filter(v.double().numpy(), sigmas, mode="nearest", truncate=3.0)
        assert np.allclose(augmentation.gaussian_blur(v, sigmas).numpy(), ref, atol=1e-5), sigmas


def test_blur_and_sharpen_draws_change_nothing_while_off():
    x = torch.rand(2, 1, 20, 24, 20)
    off = dict(SMOKE.augment, p_blur=0.0, p_sharpen=0.0)
    a = augmentation.augment_batch(x, torch.Generator().manual_seed(5), off, spacing_mm=4.0)
    without = {k: v for k, v in off.items() if k not in ("p_blur", "p_sharpen")}
    b = augmentation.augment_batch(x, torch.Generator().manual_seed(5), without, spacing_mm=4.0)
    assert torch.equal(a, b)  # a recipe recorded before the knobs existed draws the same
    on = dict(off, p_blur=1.0)
    c = augmentation.augment_batch(x, torch.Generator().manual_seed(5), on, spacing_mm=4.0)
    assert not torch.allclose(a, c)
    axes_off = augmentation.augment_batch(
        x, torch.Generator().manual_seed(5), dict(off, p_blur_axes=0.0), spacing_mm=4.0
    )
    assert torch.equal(a, axes_off)
    axes_on = augmentation.augment_batch(
        x, torch.Generator().manual_seed(5), dict(off, p_blur_axes=1.0), spacing_mm=4.0
    )
    assert not torch.allclose(a, axes_on)


def test_monotone_contrast_curve_keeps_order_and_ends():
    v = torch.linspace(0, 1, 1001)
    out = augmentation._monotone_curve(v, 4, torch.Generator().manual_seed(0))
    assert torch.all(out[1:] >= out[:-1] - 1e-6)
    assert abs(float(out[0])) < 1e-6 and abs(float(out[-1]) - 1) < 1e-6
    assert float((out - v).abs().max()) > 0.01  # it changes the contrast


def test_lr_schedule_warms_up_then_anneals():
    steps, peak = 100, 1e-3
    lrs = [recipe.lr_at(s, steps, peak, 0.2) for s in range(steps)]
    assert lrs[0] == pytest.approx(peak / 25)
    assert max(lrs) == pytest.approx(peak, rel=1e-3)
    assert lrs[-1] < peak / 50  # annealed within the budget
    assert np.argmax(lrs) == 20


def test_pool_sample_is_torchio_motion_with_an_exact_label(sources):
    image_shape = sources["a~0"].shape[1:]
    x, table = motion_pool.render_pool(sources, SMOKE, "train", 4, progress=False)
    assert x.shape == (4, 1, *SMOKE.shape) and x.dtype == torch.float16
    moved_rows = table[table["n"] > 0]
    assert len(moved_rows)
    for i, row in moved_rows.iterrows():
        deg = np.asarray(json.loads(row["degrees"]))
        tra = np.asarray(json.loads(row["translation"]))
        times = np.asarray(json.loads(row["times"]))
        src = sources[row["source"]]
        ref = tio.Motion(deg, tra, times, "linear")(src)
        expected = preprocess(ref, SMOKE.spacing_mm, SMOKE.shape).data[0].numpy()
        got = x[i, 0].float().numpy()
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 2e-3  # float16 storage
        # the label: the applied poses' RMS deviation on the volume-centred 80 mm sphere
        poses = rigid_matrices(deg, tra)
        centre = volume_center(src.affine, image_shape)
        assert row["label"] == pytest.approx(
            motion_score(poses, radius=80.0, center=centre, pairs="consecutive"), abs=1e-6
        )


def test_render_pool_reads_its_chunks_back(sources, tmp_path, monkeypatch):
    first, table = motion_pool.render_pool(
        sources, SMOKE, "val", 3, cache_dir=tmp_path, progress=False
    )
    monkeypatch.setattr(
        motion_pool, "_sample", lambda *a, **k: pytest.fail("re-rendered a cached chunk")
    )
    again, table2 = motion_pool.render_pool(
        sources, SMOKE, "val", 3, cache_dir=tmp_path, progress=False
    )
    assert torch.equal(first, again)
    pd.testing.assert_frame_equal(table, table2)
    # other sources: another key, so nothing is reused
    other = {k: tio.ScalarImage(tensor=v.data * 2, affine=v.affine) for k, v in sources.items()}
    assert motion_pool.pool_key(other, SMOKE) != motion_pool.pool_key(sources, SMOKE)


def test_rendering_in_process_leaves_the_global_generator_alone(sources, tmp_path):
    # a cache miss rendered here and a cache hit read back leave the same torch RNG state, so
    # the model's initialisation and dropout after them are the same (as with worker processes)
    after = []
    for _ in range(2):
        torch.manual_seed(0)
        motion_pool.render_pool(sources, SMOKE, "train", 2, cache_dir=tmp_path, progress=False)
        after.append(torch.rand(3))
    assert torch.equal(after[0], after[1])


def test_validation_comes_from_held_out_pseudo_subjects(sources):
    splits = motion_pool.source_splits(sources, SMOKE)
    assert splits == {"a~0": "train", "a~1": "val", "b~0": "train", "b~1": "val"}
    _, table = motion_pool.render_pool(sources, SMOKE, "val", 4, progress=False)
    assert set(table["source"]) <= {"a~1", "b~1"}


def test_train_resumes_and_refuses_other_settings(sources, tmp_path):
    pool = motion_pool.render_pool(sources, SMOKE, "train", 8, progress=False)
    val = motion_pool.render_pool(sources, SMOKE, "val", 2, progress=False)
    labels = torch.tensor(pool[1]["label"].to_numpy()), torch.tensor(val[1]["label"].to_numpy())
    data = (pool[0], labels[0]), (val[0], labels[1])

    def model():
        torch.manual_seed(0)
        return SFCN(n_outputs=50, channels=SMOKE.channels, dropout=SMOKE.dropout)

    whole = recipe.train(model(), *data, SMOKE, tmp_path / "whole", log=False)
    assert list(whole["step"]) == [2, 4]
    half = SMOKE.replace(steps=2)
    first = model()
    recipe.train(first, *data, half, tmp_path / "split", log=False)
    with pytest.raises(ValueError, match="other recipe settings"):
        recipe.train(model(), *data, SMOKE, tmp_path / "split", log=False)
    # the saved checkpoint holds plain types only
    state = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert state["step"] == 2
    # a checkpoint written before the source knobs and the motion knob existed (its key has
    # neither) resumes while they draw nothing and motion is "pool"; with them drawing, it is
    # another recipe
    old = json.loads(state["config"])
    later = ("source_augment", "motion", "crop", "unshuffle", "detail", "detail_norm")
    later += ("label_maps", "heads_per_map", "precision")
    assert not set(later) & set(old)
    assert old == {
        k: v for k, v in json.loads(json.dumps(half.as_dict())).items() if k not in later
    }
    drawing = half.replace(source_augment=dict(half.source_augment, p_blur=0.5))
    with pytest.raises(ValueError, match="other recipe settings"):
        recipe.train(model(), *data, drawing, tmp_path / "split", log=False)
    with pytest.raises(ValueError, match="other recipe settings"):  # crops: another recipe
        recipe.train(model(), *data, half.replace(crop=(32, 32, 32)), tmp_path / "split", log=False)
    for other in (half.replace(precision="bf16"), half.replace(label_maps=("m",))):
        with pytest.raises(ValueError, match="other recipe settings"):
            recipe.train(model(), *data, other, tmp_path / "split", log=False)
    with pytest.raises(ValueError, match="precision"):
        half.replace(precision="fp16")
    folded = SFCN(n_outputs=50, channels=SMOKE.channels, unshuffle=2)
    with pytest.raises(ValueError, match="other recipe settings"):  # space-to-depth: another
        recipe.train(folded, *data, half.replace(unshuffle=2), tmp_path / "split", log=False)
    with pytest.raises(ValueError, match="needs detail=True"):
        half.replace(detail_norm="axes")
    # a checkpoint of another number of DDP processes is refused (each rank's draws differ)
    state["world_size"] = 2
    torch.save(state, tmp_path / "split" / "last.pt")
    with pytest.raises(ValueError, match="written by 2 process"):
        recipe.train(model(), *data, half, tmp_path / "split", log=False)


def test_crop_batch_cuts_a_seeded_block_at_every_corner():
    x = torch.arange(2 * 10 * 12 * 8, dtype=torch.float32).reshape(2, 1, 10, 12, 8)
    corners = set()
    for seed in range(100):
        out = augmentation.crop_batch(x, (6, 12, 3), torch.Generator().manual_seed(seed))
        assert out.shape == (2, 1, 6, 12, 3)
        for v, c in zip(x, out, strict=True):
            i, j, k = np.unravel_index(int(c[0, 0, 0, 0] - v[0, 0, 0, 0]), (10, 12, 8))
            assert torch.equal(c, v[:, i : i + 6, j : j + 12, k : k + 3])  # a block of the volume
            corners.add((int(i), int(j), int(k)))
    # every corner that fits is drawn: x 0..4, y 0 only, z 0..5
    assert {c[0] for c in corners} == set(range(5))
    assert {c[1] for c in corners} == {0}
    assert {c[2] for c in corners} == set(range(6))
    first = augmentation.crop_batch(x, (6, 12, 3), torch.Generator().manual_seed(3))
    assert torch.equal(
        first, augmentation.crop_batch(x, (6, 12, 3), torch.Generator().manual_seed(3))
    )
    with pytest.raises(ValueError, match="does not fit"):
        augmentation.crop_batch(x, (11, 12, 8), torch.Generator())


def test_train_on_crops_validates_on_the_whole_grid(sources):
    pool = motion_pool.render_pool(sources, SMOKE, "train", 8, progress=False)
    val = motion_pool.render_pool(sources, SMOKE, "val", 2, progress=False)
    labels = torch.tensor(pool[1]["label"].to_numpy()), torch.tensor(val[1]["label"].to_numpy())
    cropped = SMOKE.replace(crop=[32, 32, 32])
    assert cropped.crop == (32, 32, 32)
    torch.manual_seed(0)
    model = SFCN(n_outputs=50, channels=SMOKE.channels, dropout=SMOKE.dropout)
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append((m.training, tuple(a[0].shape[1:]))))
    history = recipe.train(model, (pool[0], labels[0]), (val[0], labels[1]), cropped, log=False)
    assert {shape for training, shape in seen if training} == {(1, 32, 32, 32)}
    assert {shape for training, shape in seen if not training} == {(1, 40, 48, 40)}
    assert list(history["step"]) == [2, 4] and np.isfinite(history["val_r2"]).all()
    with pytest.raises(ValueError, match="does not fit"):
        SMOKE.replace(crop=(48, 48, 40))
    with pytest.raises(ValueError, match="too small for SFCN"):
        SMOKE.replace(crop=(16, 48, 40))


def test_fit_temperature_widens_an_overconfident_model():
    centres = bin_centers(BIN_RANGE, 50)
    rng = np.random.default_rng(0)
    truth = torch.tensor(rng.uniform(0.5, 3.5, 400))
    mean = truth + torch.tensor(rng.normal(0, 0.4, 400))  # errors of 0.4 mm ...
    logits = -((centres[None] - mean[:, None]) ** 2) / (2 * 0.1**2)  # ... claimed 0.1 mm
    t = encoder_test.fit_temperature(torch.log_softmax(logits.float(), 1), truth)
    assert t > 4
    table = pd.DataFrame({"true": truth.numpy(), "pred": mean.numpy(), "std": 0.1})
    assert encoder_test.coverage(table)["within_1std"] < 0.3


def test_split_metrics_rank_the_draws_of_one_score_as_ties():
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score

    rng = np.random.default_rng(4)
    scores = np.repeat([0.0, 0.3, 1.0, 2.0, 4.0], 4)
    pred = scores + rng.normal(0, 0.6, scores.size)
    table = pd.DataFrame({"true": scores, "pred": pred, "std": 0.5})
    got = encoder_test.split_metrics(table)
    assert got["spearman"] == pytest.approx(spearmanr(scores, pred).statistic)
    assert got["r2"] == pytest.approx(r2_score(scores, pred))
    assert got["mae"] == pytest.approx(mean_absolute_error(scores, pred))
    # the sampler's last digits (1e-13 mm here) leave the ranking as it was
    noise = rng.uniform(-1e-12, 1e-12, scores.size)
    noisy = encoder_test.split_metrics(table.assign(true=scores + noise))
    assert noisy["spearman"] == pytest.approx(got["spearman"], abs=1e-12)
    assert spearmanr(scores + noise, pred).statistic != pytest.approx(got["spearman"])


def test_band_table_medians_by_true_score():
    table = pd.DataFrame({"true": [0.0, 0.3, 1.5, 1.5, 4.0], "pred": [0.1, 0.5, 1.0, 2.0, 3.0]})
    bands = encoder_test.band_table(table).set_index("band")
    assert bands.loc["[0, 0.5)", "n"] == 2
    assert bands.loc["[0, 0.5)", "median_error"] == pytest.approx(0.15)
    assert bands.loc["[1.5, 2)", "median_pred"] == pytest.approx(1.5)
    assert bands.loc["[3, 4]", "median_abs_error"] == pytest.approx(1.0)
    assert bands.loc["[2, 3)", "n"] == 0


def test_release_run_writes_weights_and_provenance(tmp_path, monkeypatch):
    heads = {"robex_atlas": _head(5), "mni152_2009": _head(6), "colin27": _head(7)}
    files = {}
    for name, img in heads.items():
        files[name] = tmp_path / f"{name}.nii.gz"
        img.save(files[name])
    manifest = pd.DataFrame({"volume_id": list(files), "path": [str(p) for p in files.values()]})
    monkeypatch.setattr(release, "sample_manifest", lambda: manifest)
    out = tmp_path / "weights" / "motion_encoder.pt"
    prov = release.run(
        SMOKE,
        out=out,
        run_dir=tmp_path / "run",
        num_workers=0,
        draws=1,
        command="test",
        cache_dir=tmp_path / "cache",
    )
    written = json.loads(out.with_suffix(".json").read_text())
    assert written == json.loads(json.dumps(prov))
    from motionqc.data.volumes import file_sha256

    assert written["sha256"] == file_sha256(out)
    assert written["data"]["colin27"]["role"] == "test"
    assert written["score_convention"] == SCORE_CONVENTION.as_dict()
    assert len(written["unseen_heads"]["bands"]) == 6
    assert set(written["unseen_heads"]["metrics"]) >= {"r2", "spearman", "mae", "within_1std"}
    model, meta = load_encoder(out)
    assert meta["input_intensity"] == "percentile"
    assert meta["temperature"] == written["temperature"]
    assert meta["score_convention"] == SCORE_CONVENTION.as_dict()
    with pytest.raises(ValueError, match="also used for training"):
        release.run(SMOKE, out=out, run_dir=tmp_path / "run", test_heads=["robex_atlas"])
    # under torchrun only rank 0 writes: another rank returns the same provenance, no file
    monkeypatch.setattr(release, "distributed_info", lambda: (1, 2, 1))
    other = tmp_path / "rank1" / "motion_encoder.pt"
    kwargs = {"run_dir": tmp_path / "run1", "num_workers": 0, "draws": 1, "command": "test"}
    prov1 = release.run(SMOKE, out=other, cache_dir=tmp_path / "cache", **kwargs)
    assert not other.exists() and not other.with_suffix(".json").exists()
    assert prov1["machine"]["processes"] == 2 and "sha256" not in prov1
    assert prov1["machine"]["device"] == written["machine"]["device"] == "cpu"
    assert prov1["unseen_heads"]["metrics"] == written["unseen_heads"]["metrics"]


def test_encoder_file_with_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "encoder.pt"
    save_encoder(
        path, SFCN(n_outputs=50, channels=SMOKE.channels), spacing_mm=4, shape=(40, 48, 40)
    )
    state = torch.load(path, weights_only=True)
    marker = tmp_path / "ran"
    state["info"] = {"payload": CodePayload(str(marker))}
    torch.save(state, path)
    with pytest.raises(EncoderError, match="not loaded"):
        load_encoder(path)
    assert not marker.exists()


def test_released_encoder_ships_with_its_provenance():
    from motionqc.data.volumes import file_sha256
    from motionqc.models.encoder import released_encoder_path

    path = released_encoder_path()
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["sha256"] == file_sha256(path)
    assert path.stat().st_size <= 16 * 2**20
    model, meta = load_encoder(path)
    assert meta["score_convention"] == SCORE_CONVENTION.as_dict() == info["score_convention"]
    assert list(meta["shape"]) == info["geometry"]["shape"]
    train, tested = set(info["recipe"]["train_heads"]), set(info["unseen_heads"]["heads"])
    assert not train & tested
    heads = info["data"].get("heads", info["data"])  # a corpus release lists them under "heads"
    if "heads" in info["data"]:  # trained on the corpus: test heads stand with the test only
        heads = heads | info["unseen_heads"]["files"]
        assert not set(info["data"]["heads"]) & tested
    assert set(heads) >= train | tested
    assert all(len(h["sha256"]) == 64 for h in heads.values())
    if "files" in info["unseen_heads"]:  # trained on the corpus: its split, licences, attribution
        assert {heads[h]["role"] for h in train} == {"train"}
        assert {heads[h]["role"] for h in tested} == {"test"}
        assert not [h for h in info["data"]["heads"] if heads[h]["use"] == "test only"]
        assert all(heads[h]["licence"] for h in heads)
        assert any("brain-development.org/ixi-dataset" in a for a in info["data"]["attribution"])
        assert not Path(info["data"]["manifest"]).is_absolute()  # no machine's folder


def test_simulate_score_is_the_label_under_the_encoders_convention(tmp_path):
    from motionqc.app.simulate import simulate_file

    src = tmp_path / "sub-01_T1w.nii.gz"
    _head(9).save(src)
    sidecar = simulate_file(src, tmp_path / "moved_T1w.nii.gz", 1.5, seed=3)
    assert sidecar["ScoreConvention"] == SCORE_CONVENTION.as_dict()
    import nibabel as nib

    img = nib.load(str(src))
    poses = rigid_matrices(np.asarray(sidecar["Degrees"]), np.asarray(sidecar["Translation"]))
    centre = volume_center(img.affine, img.shape[:3])
    label = motion_score(poses, radius=SCORE_CONVENTION.radius, center=centre, pairs="consecutive")
    assert label == pytest.approx(1.5, abs=1e-4)


def test_resample_affine_matches_scipy():
    from scipy.ndimage import affine_transform
    from scipy.spatial.transform import Rotation

    v = torch.rand(1, 1, 20, 24, 18, generator=torch.Generator().manual_seed(0))
    zoom, angles, shift, spacing = 1.15, [7.0, -5.0, 11.0], [3.0, -4.5, 2.0], 2.0
    out = augmentation.resample_affine(v, zoom, angles, shift, spacing)[0, 0].numpy()
    # scipy maps output voxel o to input voxel M o + offset
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()  # X first, then Y, Z
    centre = (np.array(v.shape[2:]) - 1) / 2
    m = rot.T / zoom
    offset = centre - m @ centre - rot.T @ np.array(shift) / zoom / spacing
    ref = affine_transform(v[0, 0].double().numpy(), m, offset=offset, order=1, mode="constant")
    inner = (slice(3, -3),) * 3  # the two treat the last half voxel at the edge differently
    assert np.abs(out - ref)[inner].max() < 1e-5


def test_geometry_scales_the_label_with_the_head():
    # a ball of radius 6 voxels: zoomed by s, its volume grows by s**3, and the label by s
    grid = torch.stack(torch.meshgrid(*[torch.arange(32.0) - 15.5] * 3, indexing="ij"))
    ball = ((grid**2).sum(0) <= 36).float()[None, None].repeat(6, 1, 1, 1, 1)
    labels = torch.full((6,), 2.0)
    augment = {"p_geometry": 1.0, "zoom": 0.2, "rotate_deg": 0.0, "shift_mm": 0.0}
    out, scaled = augmentation.geometry_batch(
        ball, labels, torch.Generator().manual_seed(3), augment, 4.0
    )
    s = scaled / labels
    assert float(s.min()) >= 1 / 1.2 - 1e-6 and float(s.max()) <= 1.2 + 1e-6 and s.std() > 0.01
    measured = (out.sum((1, 2, 3, 4)) / ball.sum((1, 2, 3, 4))) ** (1 / 3)
    assert torch.allclose(measured, s, rtol=0.03)
    # off (the recipes' default): nothing drawn, nothing changed
    off = dict(augment, p_geometry=0.0)
    same, kept = augmentation.geometry_batch(
        ball, labels, torch.Generator().manual_seed(3), off, 4.0
    )
    assert same is ball and kept is labels


def _pool_manifest(tmp_path, rows):
    """A manifest TSV of real NIfTI files (the synthetic heads), one row per (subject, role, split)."""
    lines = ["volume_id\tdataset\tsite\tsubject\tpath\tqc_score\trole\tsplit"]
    for i, (subject, role, split, score) in enumerate(rows):
        path = tmp_path / f"v{i}.nii.gz"
        _head(10 + i).save(path)
        lines.append(f"v{i}\tD\tS{i % 2}\t{subject}\t{path.name}\t{score}\t{role}\t{split}")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_manifest_heads_take_the_pool_and_its_split_by_subject(tmp_path):
    rows = [
        ("s1", "synthetic_pool", "train", 4),
        ("s1", "synthetic_pool", "train", 3),
        ("s2", "synthetic_pool", "train", 4),
        ("s3", "synthetic_pool", "val", 4),
        ("s4", "synthetic_pool", "test", 4),
        ("s5", "transfer", "train", 2),
        ("s6", "synthetic_pool", "test", 4),
    ]
    manifest = _pool_manifest(tmp_path, rows)
    (tmp_path / "v6.nii.gz").unlink()  # a missing file is left out and listed
    with pytest.warns(UserWarning, match="v6: file not found"):
        heads = stage.manifest_heads(manifest)
    assert (heads.train, heads.val, heads.test) == (("v0", "v1", "v2"), ("v3",), ("v4",))
    assert set(heads.errors) == {"v6"}
    assert heads.files["v0"] == tmp_path / "v0.nii.gz"
    # a given split that puts one subject in two splits is refused, naming the manifest
    (tmp_path / "leaky").mkdir()
    leaky = _pool_manifest(tmp_path / "leaky", [*rows[:4], ("s1", "synthetic_pool", "test", 4)])
    with pytest.raises(ValueError, match="manifest.tsv: subject s1 .* more than one split"):
        stage.manifest_heads(leaky)
    # without roles and splits: the volumes rated best_score, a drawn split by subject
    (tmp_path / "own").mkdir()
    own_rows = [(f"s{i // 2}", "", "", 4 if i % 3 else 3) for i in range(18)]
    own = _pool_manifest(tmp_path / "own", own_rows)
    table = pd.read_csv(own, sep="\t").drop(columns=["role", "split"])
    table.to_csv(own, sep="\t", index=False)
    drawn = stage.manifest_heads(own, seed=0)
    assert set(drawn.table["volume_id"]) == {f"v{i}" for i in range(18) if i % 3}
    assert (drawn.table.groupby("subject")["split"].nunique() == 1).all()
    assert drawn.train and drawn.val and drawn.test


def test_pretrain_stage_runs_on_a_manifest_pool(tmp_path):
    rows = [
        (f"s{i}", "synthetic_pool", split, 4)
        for i, split in enumerate(["train", "train", "train", "val", "test"])
    ]
    heads = stage.manifest_heads(_pool_manifest(tmp_path, rows))
    config = SMOKE.replace(train_heads=heads.train, val_heads=heads.val, pseudo_subjects=1)
    result = stage.run(
        config, heads.files, test_heads=heads.test, draws=1, num_workers=0, log=False
    )
    pred = result.predictions
    assert set(result.pool_table["head"]) <= set(heads.train)
    assert set(pred.loc[pred["split"] == "val", "head"]) == set(heads.val)
    assert set(pred.loc[pred["split"] == "test", "head"]) == set(heads.test)
    assert (pred["split"] == "test").sum() == len(encoder_test.TEST_SCORES)
    with pytest.raises(ValueError, match="both training and validating"):
        motion_pool.load_sources(heads.files, config.replace(val_heads=(heads.train[0],)))
    with pytest.raises(ValueError, match="also used for training"):
        stage.run(config, heads.files, test_heads=heads.val)


def test_bf16_training_steps_differ_from_fp32_and_stay_finite(sources):
    pool = motion_pool.render_pool(sources, SMOKE, "train", 8, progress=False)
    val = motion_pool.render_pool(sources, SMOKE, "val", 2, progress=False)
    data = (
        (pool[0], torch.tensor(pool[1]["label"].to_numpy())),
        (
            val[0],
            torch.tensor(val[1]["label"].to_numpy()),
        ),
    )
    weights = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = SFCN(n_outputs=50, channels=SMOKE.channels, dropout=0.0)
        history = recipe.train(model, *data, SMOKE.replace(precision=precision), log=False)
        assert np.isfinite(history["train_loss"]).all()
        weights[precision] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(weights["fp32"], weights["bf16"])  # the forward ran in bf16
    assert torch.allclose(weights["fp32"], weights["bf16"], atol=5e-2)


def test_release_run_on_a_corpus_trains_on_its_split_and_lists_every_head(tmp_path):
    from motionqc.data.corpus import LABEL_MAP, TEST_ONLY, training_heads
    from motionqc.data.volumes import file_sha256

    rows = []
    for i, (split, use) in enumerate(
        [("train", "train or test")] * 2 + [("val", "train or test"), ("test", TEST_ONLY)]
    ):
        path = tmp_path / f"h{i}.nii.gz"
        ellipsoid_head(i, shape=(10, 12, 10), spacing=4.0).save(path)
        rows.append((f"h{i}", "IXI" if i < 3 else "other", split, use, str(path)))
    labels = np.zeros((40, 48, 40), dtype=np.int16)
    labels[8:32, 8:40, 8:32], labels[14:26, 14:34, 14:26] = 530, 17
    label_path = tmp_path / "seg.nii.gz"
    tio.LabelMap(tensor=torch.from_numpy(labels)[None], affine=np.diag([1, 1, 1, 1.0])).save(
        label_path
    )
    rows.append(("seg", "labels", "labels", LABEL_MAP, str(label_path)))
    corpus = pd.DataFrame(rows, columns=["volume_id", "dataset", "split", "use", "path"])
    corpus["licence"] = ["CC BY-SA 3.0"] * 3 + ["MIT", "Apache-2.0"]
    corpus["sha256"] = [file_sha256(p) for p in corpus["path"]]
    train, val, test, maps = training_heads(corpus)
    config = SMOKE.replace(train_heads=train, val_heads=val, label_maps=maps, heads_per_map=2)
    out = tmp_path / "w" / "motion_encoder.pt"
    kwargs = {"run_dir": tmp_path / "run", "num_workers": 0, "draws": 1, "command": "t"}
    prov = release.run(config, out=out, test_heads=test, corpus=corpus, **kwargs)
    heads = prov["data"]["heads"]  # what trained; the test heads stand with the test
    assert set(heads) == {"h0", "h1", "h2", "seg"}
    assert [heads[h]["role"] for h in ("h0", "h2", "seg")] == ["train", "val", "labels"]
    tested = prov["unseen_heads"]["files"]
    assert set(tested) == {"h3"} and tested["h3"]["role"] == "test"
    assert tested["h3"]["use"] == TEST_ONLY and heads["seg"]["licence"] == "Apache-2.0"
    assert tested["h3"]["sha256"] == file_sha256(tmp_path / "h3.nii.gz")
    assert heads["h1"]["sha256"] == file_sha256(tmp_path / "h1.nii.gz")
    assert any("IXI" in a for a in prov["data"]["attribution"])
    assert "1 mm grid" in prov["unseen_heads"]["motion"]
    assert prov["recipe"]["label_maps"] == ["seg"]
    table = pd.read_csv(tmp_path / "run" / "predictions.csv")
    trained = set(table.loc[table["split"] == "train", "head"])
    assert trained <= {"h0", "h1", "seg.g0", "seg.g1"} and trained & {"seg.g0", "seg.g1"}
    assert set(table.loc[table["split"] == "test", "head"]) == {"h3"}
