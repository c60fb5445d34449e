"""simulate_motion against TorchIO's own Motion, on the real sample heads."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.data.io import nib_to_sitk

from motionqc.data.volumes import load_volume
from motionqc.physics.motion import (
    itk_euler_matrix,
    kspace_weights,
    rigid_matrices,
    simulate_motion,
)
from motionqc.physics.transforms import MotionTransform, RandomMotionTransform

AFFINES = {
    "own": None,  # the volume's own (RAS, downsampled) affine
    "flipped_aniso": np.array(
        [[-2.5, 0, 0, 40.0], [0, 3.0, 0, -60.0], [0, 0, -1.5, 25.0], [0, 0, 0, 1]]
    ),
    "permuted": np.array(
        [[0, 2.0, 0, -30.0], [-3.0, 0, 0, 50.0], [0, 0, 1.25, -70.0], [0, 0, 0, 1]]
    ),
}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def heads(sample) -> dict[str, tio.ScalarImage]:
    """The real sample heads, resampled to 6 mm (small and quick), RAS."""
    out = {}
    for row in sample.itertuples():
        image = load_volume(row.path)
        tensor = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32))[None]
        out[row.volume_id] = tio.Resample(6.0)(tio.ScalarImage(tensor=tensor, affine=image.affine))
    return out


def torchio_motion(data: torch.Tensor, affine: np.ndarray, deg, tra, times) -> torch.Tensor:
    image = tio.ScalarImage(tensor=data[None] if data.ndim == 3 else data, affine=affine)
    motion = tio.Motion(degrees=deg, translation=tra, times=times, image_interpolation="linear")
    return motion(image).data


def draw(seed: int, n: int, scale: float = 6.0):
    rng = np.random.default_rng(seed)
    deg = rng.uniform(-scale, scale, (n, 3))
    tra = rng.uniform(-scale, scale, (n, 3))
    step = 1 / (n + 1)
    times = (np.arange(1, n + 1) * step + rng.uniform(-0.3 * step, 0.3 * step, n)).astype(
        np.float32
    )
    return deg, tra, times


def test_itk_euler_matrix_matches_simpletk():
    rng = np.random.default_rng(0)
    for angles in rng.uniform(-np.pi, np.pi, (5, 3)):
        euler = sitk.Euler3DTransform()
        euler.SetRotation(*angles.tolist())
        expected = np.array(euler.GetMatrix()).reshape(3, 3)
        np.testing.assert_allclose(itk_euler_matrix(angles), expected, atol=1e-12)


@pytest.mark.parametrize("affine_kind", list(AFFINES))
@pytest.mark.parametrize("seed,n", [(0, 1), (1, 2), (2, 4), (3, 8)])
def test_matches_torchio_on_sample_heads(heads, affine_kind, seed, n):
    for k, (name, head) in enumerate(sorted(heads.items())):
        affine = head.affine if AFFINES[affine_kind] is None else AFFINES[affine_kind]
        deg, tra, times = draw(1000 * seed + k, n)
        expected = torchio_motion(head.data[0], affine, deg, tra, times)[0]
        for backend in ("numba", "sitk", "torch"):
            out = simulate_motion(head.data[0], deg, tra, times, affine, backend=backend)
            assert out.shape == expected.shape and out.dtype == torch.float32
            assert rel_l2(out, expected) <= 1e-4, (name, affine_kind, backend)


def test_matches_torchio_at_native_resolution(sample):
    row = sample[sample["volume_id"] == "robex_atlas"].iloc[0]  # 1.5 mm, 116x150x155
    image = load_volume(row.path)
    data = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32))
    deg, tra, times = draw(7, 3, scale=4.0)
    expected = torchio_motion(data, image.affine, deg, tra, times)[0]
    out = simulate_motion(data, deg, tra, times, image.affine)
    assert rel_l2(out, expected) <= 1e-4


@pytest.mark.parametrize(
    "times",
    [
        [0.1, 0.3],  # no time after the centre: the unmoved image takes the last segment
        [0.6, 0.8],  # the first segment holds the centre
        [0.4, 0.4, 0.7],  # an empty segment (equal times)
        [0.0, 1.0],  # empty first and last segments
    ],
)
def test_segment_edge_cases_match_torchio(heads, times):
    head = heads["mni152_2009"]
    times = np.asarray(times, dtype=np.float32)
    deg, tra, _ = draw(11, len(times))
    expected = torchio_motion(head.data[0], head.affine, deg, tra, times)[0]
    for backend in ("numba", "sitk", "torch"):
        out = simulate_motion(head.data[0], deg, tra, times, head.affine, backend=backend)
        assert rel_l2(out, expected) <= 1e-4


def test_batch_with_per_item_parameters(heads):
    head = heads["colin27"] if "colin27" in heads else heads["mni152_2009"]
    vols = torch.stack([head.data[0], head.data[0] * 2 + 1, head.data[0].flip(0)])
    params = [draw(20 + i, 3) for i in range(3)]
    deg, tra, times = (np.stack([p[j] for p in params]) for j in range(3))
    for backend in ("numba", "sitk", "torch"):
        batch = simulate_motion(vols, deg, tra, times, head.affine, backend=backend)
        for i in range(3):
            single = simulate_motion(vols[i], deg[i], tra[i], times[i], head.affine)
            assert rel_l2(batch[i], single) < 1e-5


def test_zero_motion_leaves_image_unchanged(heads):
    head = heads["mni152_2009"]
    zeros = np.zeros((3, 3))
    for backend in ("numba", "sitk", "torch"):
        out = simulate_motion(
            head.data[0], zeros, zeros, [0.2, 0.5, 0.8], head.affine, backend=backend
        )
        assert rel_l2(out, head.data[0]) < 1e-6


def test_more_motion_changes_image_more(heads):
    head = heads["mni152_2009"]
    deg, tra, times = draw(5, 4, scale=1.0)
    errors = [
        rel_l2(simulate_motion(head.data[0], deg * s, tra * s, times, head.affine), head.data[0])
        for s in (0.5, 1, 2, 4)
    ]
    assert errors == sorted(errors) and errors[0] > 0


def test_rigid_matrices_are_what_torchio_applies():
    """A blob resampled by TorchIO's own transforms moves as the returned head pose says."""
    shape = (40, 40, 40)
    affine = AFFINES["flipped_aniso"].copy()
    affine[2, 2] = -2.0
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = ras.reshape(-1, 3).mean(0) + np.array([10.0, -5.0, 8.0])
    blob = np.exp(-((ras - centre) ** 2).sum(-1) / (2 * 6.0**2)).astype(np.float32)
    deg, tra, _ = draw(3, 2, scale=8.0)
    image = nib_to_sitk(torch.from_numpy(blob)[None], affine, force_3d=True)
    transforms = tio.Motion(deg, tra, np.array([0.3, 0.6]), "linear").get_rigid_transforms(
        deg, tra, image
    )
    poses = rigid_matrices(deg, tra, affine, shape)
    assert poses.shape == (3, 4, 4)
    np.testing.assert_allclose(poses[0], np.eye(4))
    for k in (1, 2):
        moved = sitk.GetArrayFromImage(
            sitk.Resample(image, image, transforms[k], sitk.sitkLinear, 0.0)
        ).transpose()
        found = (ras * moved[..., None]).reshape(-1, 3).sum(0) / moved.sum()
        predicted = (poses[k] @ np.r_[centre, 1])[:3]
        assert np.linalg.norm(found - predicted) < 0.2  # mm
        wrong = (np.linalg.inv(poses[k]) @ np.r_[centre, 1])[:3]  # the opposite convention
        assert np.linalg.norm(found - wrong) > 5.0
    intended = rigid_matrices(deg, tra, affine, shape, rotation_center="image")
    assert not np.allclose(intended, poses)


def test_kspace_weights_partition_unity():
    for size in (9, 10, 64):
        w = kspace_weights(np.array([0.2, 0.45, 0.7], np.float32), size)
        assert w.shape == (4, size // 2 + 1)
        np.testing.assert_allclose(w.sum(0), 1.0)
        assert w[0, 0] == 1.0  # the unmoved image owns the k-space centre


def test_transform_wrappers_match_torchio(heads):
    head = heads["mni152_2009"]
    two = torch.cat([head.data, head.data.flip(1)])  # two channels, same motion
    subject = tio.Subject(t1=tio.ScalarImage(tensor=two, affine=head.affine))
    deg, tra, times = draw(8, 2)
    ours = tio.Compose([MotionTransform(deg, tra, times)])(subject)
    ref = tio.Motion(deg, tra, times, "linear")(subject)
    assert rel_l2(ours.t1.data, ref.t1.data) <= 1e-4
    torch.manual_seed(3)
    random_ours = RandomMotionTransform(degrees=5, translation=5, num_transforms=3)(subject)
    torch.manual_seed(3)
    random_ref = tio.RandomMotion(degrees=5, translation=5, num_transforms=3)(subject)
    assert rel_l2(random_ours.t1.data, random_ref.t1.data) <= 1e-4
    assert random_ours.history  # the applied parameters are recorded
    # TorchIO's signature: image_interpolation may be passed; linear is the only exact one.
    explicit = RandomMotionTransform(degrees=5, translation=5, image_interpolation="linear")
    assert explicit.num_transforms == 2
    with pytest.raises(ValueError, match="only interpolation"):
        RandomMotionTransform(degrees=5, translation=5, image_interpolation="wrong")


def test_bad_arguments_raise_value_error(heads):
    data = heads["mni152_2009"].data[0]
    deg, tra, times = draw(0, 2)
    with pytest.raises(ValueError, match="shape"):
        simulate_motion(data, deg[:, :2], tra, times)
    with pytest.raises(ValueError, match="same shape"):
        simulate_motion(data, deg, tra[:1], times)
    with pytest.raises(ValueError, match="sorted"):
        simulate_motion(data, deg, tra, times[::-1].copy())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        simulate_motion(data, deg, tra, [0.2, 1.5])
    with pytest.raises(ValueError, match="backend"):
        simulate_motion(data, deg, tra, times, backend="cuda")
    with pytest.raises(ValueError, match="4x4"):
        simulate_motion(data, deg, tra, times, affine=np.eye(3))
    with pytest.raises(ValueError, match="volume"):
        simulate_motion(data[0], deg, tra, times)
