"""SFCN and QCHead: the reference's parameter count, shapes on every profile grid, the embedding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from motionqc.models.sfcn import SFCN, QCHead, encoder_shape, space_to_depth
from motionqc.profiles import PROFILES


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_reference():
    # ha-ha-ha-han/UKBiobank_deep_pretrain SFCN(output_dim=50): 2,953,586 parameters.
    assert n_params(SFCN(n_outputs=50)) == 2_953_586
    # Only the final 1x1x1 conv depends on n_outputs: 64*n + n.
    assert n_params(SFCN(n_outputs=3)) == 2_953_586 - 65 * 50 + 65 * 3


def test_layer_order_is_the_papers():
    model = SFCN()
    blocks = list(model.feature_extractor)
    assert len(blocks) == 6
    for block in blocks[:5]:
        assert [type(m) for m in block] == [nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ReLU]
        assert block[0].kernel_size == (3, 3, 3) and block[0].padding == (1, 1, 1)
    assert [type(m) for m in blocks[5]] == [nn.Conv3d, nn.BatchNorm3d, nn.ReLU]
    assert blocks[5][0].kernel_size == (1, 1, 1)
    assert [b[0].out_channels for b in blocks] == [32, 64, 128, 256, 256, 64]
    assert model.dropout.p == 0.5


@pytest.mark.parametrize(
    "shape, expected",
    [((160, 192, 160), (5, 6, 5)), ((80, 96, 80), (2, 3, 2)), ((40, 48, 40), (1, 1, 1))],
)
def test_encoder_shape(shape, expected):
    assert encoder_shape(shape) == expected


def test_profiles_grids_are_supported():
    for profile in PROFILES.values():
        encoder_shape(profile.shape)  # must not raise


def test_encoder_shape_rejects_small_grids():
    with pytest.raises(ValueError, match="too small"):
        encoder_shape((24, 24, 24))
    with pytest.raises(ValueError, match="three positive"):
        encoder_shape((40, 48))


def test_forward_shapes_and_log_probabilities():
    torch.manual_seed(0)
    model = SFCN(n_outputs=50).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 50)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))


def test_features_on_a_multi_voxel_map_and_pooling_covers_whole_map():
    # A narrow SFCN (same layers, fewer channels) keeps this fast; 64x96x64 -> 2x3x2 like 80x96x80.
    torch.manual_seed(0)
    model = SFCN(n_outputs=3, channels=(4, 4, 4, 4, 4, 8)).eval()
    x = torch.randn(1, 1, 64, 96, 64)
    with torch.no_grad():
        flat = model.features(x)
        pooled = model.features(x, pooled=True)
        assert torch.equal(pooled, model.pooled_features(x))
        fmap = model.encode(x)
        out = model(x)
    assert fmap.shape == (1, 8, 2, 3, 2)
    assert flat.shape == (1, model.embedding_size((64, 96, 64))) == (1, 96)
    torch.testing.assert_close(flat, fmap.flatten(1))
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3, 4)))
    # The head sees exactly the pooled vector: forward == log_softmax(W pooled + b) in eval mode.
    w = model.classifier.weight.flatten(1)
    torch.testing.assert_close(out, torch.log_softmax(pooled @ w.T + model.classifier.bias, 1))
    assert SFCN().embedding_size((80, 96, 80)) == 64 * 2 * 3 * 2
    assert SFCN().embedding_size((40, 48, 40)) == 64


def test_pooling_equals_reference_avgpool_at_1mm():
    # The reference pools with AvgPool3d([5, 6, 5]); on the 1 mm map our global average is identical.
    fmap = torch.randn(2, 64, 5, 6, 5)
    model = SFCN()
    torch.testing.assert_close(model.pool(fmap), nn.AvgPool3d([5, 6, 5])(fmap))
    assert SFCN().embedding_size((160, 192, 160)) == 9600


def test_logits_option_and_backward():
    model = SFCN(n_outputs=3, log_softmax=False, dropout=0.0, channels=(4, 4, 4, 4, 4, 8))
    x = torch.randn(2, 1, 32, 32, 32)
    out = model(x)
    assert out.shape == (2, 3)
    assert not torch.allclose(out.exp().sum(1), torch.ones(2))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="n_outputs"):
        SFCN(n_outputs=0)
    with pytest.raises(ValueError, match="six"):
        SFCN(channels=(8, 8))
    with pytest.raises(ValueError, match="dropout"):
        SFCN(dropout=1.0)
    model = SFCN()
    with pytest.raises(ValueError, match="5-D"):
        model(torch.zeros(1, 40, 48, 40))
    with pytest.raises(ValueError, match="input channel"):
        model(torch.zeros(1, 2, 40, 48, 40))
    with pytest.raises(ValueError, match="too small"):
        model(torch.zeros(1, 1, 24, 24, 24))


def test_space_to_depth_folds_every_voxel_into_channels():
    x = torch.randn(2, 3, 4, 6, 8)
    out = space_to_depth(x, 2)
    assert out.shape == (2, 24, 2, 3, 4)
    # channel c*8 + (i*2 + j)*2 + k holds the voxels at offset (i, j, k) of each 2x2x2 block
    for c in range(3):
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    want = x[:, c, i::2, j::2, k::2]
                    assert torch.equal(out[:, c * 8 + (i * 2 + j) * 2 + k], want)
    assert space_to_depth(x, 1) is x
    with pytest.raises(ValueError, match="multiple"):
        space_to_depth(x, 3)
    with pytest.raises(ValueError, match="at least 1"):
        space_to_depth(x, 0)


def test_unshuffled_sfcn_runs_the_coarse_network_on_the_fine_grid():
    torch.manual_seed(0)
    folded = SFCN(unshuffle=2).eval()
    assert folded.feature_extractor[0][0].in_channels == 8
    assert folded.embedding_size((80, 96, 80)) == 64  # 40x48x40 after folding: a 1x1x1 map
    x = torch.randn(2, 1, 80, 96, 80)
    plain = SFCN(in_channels=8).eval()
    plain.load_state_dict(folded.state_dict())
    blocks = torch.stack(
        [x[:, 0, i::2, j::2, k::2] for i in range(2) for j in range(2) for k in range(2)], 1
    )
    with torch.no_grad():
        assert torch.allclose(folded(x), plain(blocks), atol=1e-5)
        last = x.contiguous(memory_format=torch.channels_last_3d)
        assert torch.allclose(folded(last), plain(blocks), atol=1e-5)
    assert folded.features(x).shape == (2, 64)
    with pytest.raises(ValueError, match="multiples of 2"):
        folded(torch.zeros(1, 1, 81, 96, 80))
    with pytest.raises(ValueError, match="too small"):
        folded(torch.zeros(1, 1, 40, 48, 40))  # 20x24x20 after folding
    with pytest.raises(ValueError, match="unshuffle"):
        SFCN(unshuffle=0)


def test_axes_detail_norm_keeps_only_how_the_detail_axes_differ():
    torch.manual_seed(0)
    model = SFCN(in_channels=4, detail_norm="axes").eval()
    x = torch.randn(2, 4, 40, 48, 40)
    level = torch.randn(2, 1, 40, 48, 40)  # one field added to all three detail channels
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(
            model(x + torch.cat([0 * level, level, level, level], 1)), out, atol=1e-5
        )
        one_axis = x.clone()
        one_axis[:, 3] += level[:, 0]
        assert not torch.allclose(model(one_axis), out, atol=1e-3)
        head = x.clone()
        head[:, 0] += level[:, 0]
        assert not torch.allclose(model(head), out, atol=1e-3)
        plain = SFCN(in_channels=4).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(
            plain(x + torch.cat([0 * level, level, level, level], 1)), plain(x), atol=1e-3
        )
    with pytest.raises(ValueError, match="detail_norm"):
        SFCN(in_channels=4, detail_norm="volume")
    with pytest.raises(ValueError, match="three input channels"):
        SFCN(in_channels=1, detail_norm="axes")


def test_background_detail_norm_reads_the_detail_outside_the_head_only():
    torch.manual_seed(0)
    model = SFCN(in_channels=4, detail_norm="background").eval()
    x = torch.randn(1, 4, 40, 48, 40)
    x[:, 0] = 0.01 * x[:, 0].abs()  # a dark background ...
    x[:, 0, 10:30, 12:36, 10:30] = 1.0  # ... around a bright head
    with torch.no_grad():
        out = model(x)
        inside = x.clone()
        inside[:, 1:, 12:28, 14:34, 12:28] += 2.0  # detail inside the head: not read
        assert torch.allclose(model(inside), out, atol=1e-5)
        outside = x.clone()
        outside[:, 1:, :8] += 2.0  # detail in the background: read
        assert not torch.allclose(model(outside), out, atol=1e-3)
        plain = SFCN(in_channels=4).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain(inside), plain(x), atol=1e-3)


def test_qchead_architecture_and_output():
    torch.manual_seed(0)
    head = QCHead(in_features=384, hidden=10, dropout=0.77)
    kinds = [type(m) for m in head.net]
    assert kinds == [
        nn.Dropout,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
    ]
    assert (
        head.net[0].p == 0.77 and head.net[1].out_features == 10 and head.net[-1].out_features == 3
    )
    z = torch.randn(4, 384)
    assert head(z).shape == (4, 3)
    with pytest.raises(ValueError, match="embeddings"):
        head(torch.randn(4, 100))
    with pytest.raises(ValueError, match="in_features"):
        QCHead(0)


def test_sfcn_features_feed_qchead():
    torch.manual_seed(0)
    model = SFCN(channels=(4, 4, 4, 4, 4, 8)).eval()
    head = QCHead(model.embedding_size((40, 48, 40))).eval()
    with torch.no_grad():
        logits = head(model.features(torch.randn(3, 1, 40, 48, 40)))
    assert logits.shape == (3, 3)
