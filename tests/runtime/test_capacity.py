"""motionqc.runtime.capacity: FLOPs and saved-activation bytes counted on the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from motionqc.models.sfcn import SFCN
from motionqc.runtime.capacity import activation_bytes, plan, training_flops


def _conv_forward_flops(model: nn.Module, shape: tuple[int, int, int]) -> float:
    """Analytic count: 2 x output voxels x C_out x C_in x k^3 for every Conv3d, from real shapes."""
    total = 0.0

    def hook(mod: nn.Conv3d, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
        total += 2.0 * out.numel() * mod.in_channels * k / mod.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, *shape))
    for h in handles:
        h.remove()
    return total


def test_sfcn_flops_at_1mm_match_the_known_figure_and_an_analytic_count() -> None:
    model = SFCN(n_outputs=50)
    per_volume = training_flops(model, (160, 192, 160))
    assert per_volume == pytest.approx(386.5e9, rel=0.005)  # the figure quoted for 1 mm SFCN
    small = (40, 48, 40)
    forward = _conv_forward_flops(SFCN(n_outputs=50), small)
    # forward + backward = forward + 2 x forward, less the input gradient of the first layer
    assert forward * 2 < training_flops(model, small) < forward * 3


def test_activation_bytes_scale_and_match_a_real_forward() -> None:
    model = SFCN(n_outputs=50)
    shape = (40, 48, 40)
    two, four = activation_bytes(model, shape, 2, "fp32"), activation_bytes(model, shape, 4, "fp32")
    assert four == pytest.approx(2 * two, rel=1e-3)  # BatchNorm statistics do not scale
    bf16 = activation_bytes(model, shape, 2, "bf16")
    assert 0.5 * two <= bf16 < 0.6 * two  # halved, apart from the int64 pooling indices
    real: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter):
            real[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(torch.zeros(2, 1, *shape))
    assert sum(real.values()) == pytest.approx(two, rel=0.02)


def test_plan_rows_and_bad_arguments() -> None:
    rows = plan(SFCN(n_outputs=50), (40, 48, 40), batch_sizes=(2, 4), dtypes=("bf16",))
    assert [r["batch_size"] for r in rows] == [2, 4] and rows[0]["shape"] == "40x48x40"
    with pytest.raises(ValueError, match="dtype"):
        activation_bytes(SFCN(), (40, 48, 40), 2, "int8")
    with pytest.raises(ValueError, match="batch_size"):
        activation_bytes(SFCN(), (40, 48, 40), 1)
