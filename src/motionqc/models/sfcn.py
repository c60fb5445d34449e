"""Networks: the Simple Fully Convolutional Network (SFCN) and the authors' transfer head.

SFCN follows Peng et al. 2021, *Accurate brain age prediction with lightweight deep neural
networks* (Medical Image Analysis 68:101871), reference code ``ha-ha-ha-han/UKBiobank_deep_pretrain``:

- encoder: five blocks ``Conv3d(k3, pad 1) → BatchNorm3d → MaxPool3d(2) → ReLU`` with
  [32, 64, 128, 256, 256] channels, then ``Conv3d(k1) → BatchNorm3d → ReLU`` with 64 channels;
- head: ``AvgPool → Dropout(0.5) → Conv3d(k1, n_outputs) → log-softmax``.

With 50 outputs the network has exactly the reference's 2,953,586 parameters. The reference pools
with a fixed ``AvgPool3d([5, 6, 5])``, which on its 1 mm 160×192×160 input covers the whole final
feature map; here the head averages over the whole final map whatever its size (identical on that
input), so the smaller ``sample`` (80×96×80 → 2×3×2 map, 768 values) and ``smoke`` (40×48×40 → 1×1×1)
grids work too.

:class:`QCHead` is the MLP the authors put on the flattened SFCN embedding for the 3-class QC
transfer task: ``Dropout → [Linear → BatchNorm1d → ReLU] × 2 (10 units) → Linear(3)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from motionqc.qc_task import N_QC_CLASSES

__all__ = ["DETAIL_NORMS", "SFCN", "QCHead", "SFCN_CHANNELS", "encoder_shape", "space_to_depth"]

SFCN_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 256, 64)
"""Channel widths of the six SFCN encoder blocks (Peng et al. 2021)."""

_N_POOL = 5  # five MaxPool3d(2) blocks: each spatial size is floor-halved five times


def encoder_shape(input_shape: Sequence[int], n_pool: int = _N_POOL) -> tuple[int, int, int]:
    """Spatial shape of the SFCN encoder output for a given input grid.

    Each of the five pooled blocks keeps the size (k3, pad 1 convolution) then floor-halves it
    (``MaxPool3d(2)``).

    Args:
        input_shape: Spatial input shape (X, Y, Z), e.g. ``(160, 192, 160)``.
        n_pool: Number of ``MaxPool3d(2)`` blocks (5 in SFCN).

    Returns:
        The spatial shape of the final feature map, e.g. ``(5, 6, 5)`` for 160×192×160.

    Raises:
        ValueError: If the shape is not three positive sizes, or a size is too small to survive
            the pooling (below ``2**n_pool`` = 32 voxels for SFCN).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ValueError(f"input shape must be three positive sizes (X, Y, Z), got {input_shape!r}")
    if any(s < 2**n_pool for s in shape):
        raise ValueError(
            f"input shape {shape} is too small for SFCN: every side needs at least {2**n_pool} "
            f"voxels to survive {n_pool} max-poolings of 2"
        )
    out = list(shape)
    for _ in range(n_pool):
        out = [s // 2 for s in out]
    return out[0], out[1], out[2]


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Fold each ``factor``³ block of voxels into channels (a 3-D pixel unshuffle).

    ``(B, C, X, Y, Z)`` becomes ``(B, C·factor³, X/factor, Y/factor, Z/factor)``: nothing is
    averaged away, so a network on the coarser grid still sees every voxel of the finer one. The
    channel of voxel ``(i, j, k)`` inside its block is ``c·factor³ + (i·factor + j)·factor + k``.

    Args:
        x: A 5-D batch.
        factor: Block side (1: ``x`` itself).

    Returns:
        The folded batch.

    Raises:
        ValueError: If ``factor`` is below 1 or a spatial size is not a multiple of it.
    """
    r = int(factor)
    if r < 1:
        raise ValueError(f"the space-to-depth factor must be at least 1, got {factor}")
    if r == 1:
        return x
    b, c, *size = x.shape
    if any(s % r for s in size):
        raise ValueError(f"grid {tuple(size)} is not a multiple of the space-to-depth factor {r}")
    gx, gy, gz = (s // r for s in size)
    x = x.reshape(b, c, gx, r, gy, r, gz, r).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * r**3, gx, gy, gz)


DETAIL_NORMS = ("none", "axes", "background")
"""The ``detail_norm`` choices of :class:`SFCN`."""


def _conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    if pool:
        return nn.Sequential(
            nn.Conv3d(c_in, c_out, kernel_size=3, padding=1),
            nn.BatchNorm3d(c_out),
            nn.MaxPool3d(2, stride=2),
            nn.ReLU(),
        )
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=1, padding=0),
        nn.BatchNorm3d(c_out),
        nn.ReLU(),
    )


class SFCN(nn.Module):
    """Simple Fully Convolutional Network (Peng et al. 2021).

    The forward pass returns log-probabilities over ``n_outputs`` bins (or classes), shape
    ``(batch, n_outputs)`` (the reference returns a list holding a ``(B, n, 1, 1, 1)`` tensor).

    Args:
        n_outputs: Output bins (50 for the motion-score soft labels) or classes (3 for QC).
        in_channels: Input channels (1 for a T1w volume).
        channels: Widths of the six encoder blocks; the default is the paper's.
        dropout: Dropout probability before the final 1×1×1 convolution (0.5 in the paper);
            0 disables it.
        log_softmax: If ``True`` (default, as the paper) the forward pass returns
            log-probabilities; if ``False`` it returns raw logits.
        unshuffle: Fold each ``unshuffle``³ block of input voxels into channels before the first
            block (:func:`space_to_depth`; 1, the paper: none). With 2, a 2 mm 80×96×80 input
            runs through the network of a 4 mm 40×48×40 one, with 8 input channels.
        detail_norm: What the network subtracts from the channels after the first
            (:mod:`motionqc.data.detail`) before its first block: ``"none"``; ``"axes"``, their
            mean over the channels at each voxel (what is left is how the axes differ: an
            isotropic level, a head's own sharpness or noise, cancels); ``"background"``, their
            values inside the head (channel 0 above 0.2 of its volume mean: set to 0), so only
            the background's detail (ghosts, noise) is read.

    Raises:
        ValueError: If ``n_outputs``, ``in_channels`` or ``unshuffle`` is below 1, ``channels``
            does not hold six positive widths, ``dropout`` is outside [0, 1), or
            ``detail_norm`` is not one of :data:`DETAIL_NORMS` (any but ``"none"`` needs at
            least three input channels).

    Example:
        >>> model = SFCN(n_outputs=50)
        >>> sum(p.numel() for p in model.parameters())
        2953586
    """

    def __init__(
        self,
        n_outputs: int = 50,
        in_channels: int = 1,
        channels: Sequence[int] = SFCN_CHANNELS,
        dropout: float = 0.5,
        log_softmax: bool = True,
        unshuffle: int = 1,
        detail_norm: str = "none",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if int(n_outputs) < 1:
            raise ValueError(f"n_outputs must be at least 1, got {n_outputs}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        if len(channels) != 6 or any(c < 1 for c in channels):
            raise ValueError(f"channels must hold six positive widths, got {channels}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if int(unshuffle) < 1:
            raise ValueError(f"unshuffle must be at least 1, got {unshuffle}")
        if detail_norm not in DETAIL_NORMS or (detail_norm != "none" and int(in_channels) < 3):
            raise ValueError(
                f"detail_norm must be one of {', '.join(DETAIL_NORMS)} (not 'none': at least "
                f"three input channels), got {detail_norm!r} with {in_channels}"
            )
        self.n_outputs = int(n_outputs)
        self.in_channels = int(in_channels)
        self.detail_norm = str(detail_norm)
        self.unshuffle = int(unshuffle)
        self.channels = channels
        self.use_log_softmax = bool(log_softmax)

        blocks: list[nn.Module] = []
        c_in = self.in_channels * self.unshuffle**3
        for i, c_out in enumerate(channels):
            blocks.append(_conv_block(c_in, c_out, pool=i < len(channels) - 1))
            c_in = c_out
        self.feature_extractor = nn.Sequential(*blocks)
        # Global average over the final map: the reference's AvgPool3d([5, 6, 5]) on 160×192×160.
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv3d(channels[-1], self.n_outputs, kernel_size=1, padding=0)

    @property
    def embedding_channels(self) -> int:
        """Channels of the encoder output (64 in the paper): the size of the pooled embedding."""
        return self.channels[-1]

    def embedding_size(self, input_shape: Sequence[int]) -> int:
        """Length of the flattened embedding :meth:`features` returns for an input grid.

        Args:
            input_shape: Spatial input shape (X, Y, Z).

        Returns:
            ``channels[-1] × prod(encoder_shape(input_shape / unshuffle))``: 9600 for 160×192×160
            (64×5×6×5), 768 for 80×96×80 (64×2×3×2), 64 for 40×48×40 or for 80×96×80 with
            ``unshuffle=2``.
        """
        x, y, z = encoder_shape([int(s) // self.unshuffle for s in input_shape])
        return self.embedding_channels * x * y * z

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(
                f"SFCN expects a 5-D tensor (batch, channels, X, Y, Z), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"SFCN was built for {self.in_channels} input channel(s), got {x.shape[1]}"
            )
        r = self.unshuffle
        if any(s % r for s in x.shape[2:]):
            raise ValueError(
                f"SFCN with unshuffle={r} needs a grid of multiples of {r}, got {tuple(x.shape[2:])}"
            )
        encoder_shape([s // r for s in x.shape[2:]])  # raises on grids too small for 5 poolings

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Run the encoder and return the final feature map, shape ``(B, 64, x, y, z)``."""
        self._check_input(x)
        if self.detail_norm == "axes":
            rest = x[:, 1:]
            x = torch.cat([x[:, :1], rest - rest.mean(dim=1, keepdim=True)], dim=1)
        elif self.detail_norm == "background":
            head = x[:, :1]
            outside = head <= 0.2 * head.mean(dim=(2, 3, 4), keepdim=True)
            x = torch.cat([head, x[:, 1:] * outside], dim=1)
        if self.unshuffle > 1:
            last = x.is_contiguous(memory_format=torch.channels_last_3d)
            x = space_to_depth(x, self.unshuffle)
            if last:  # keep the caller's memory format (channels-last for oneDNN / cuDNN)
                x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.feature_extractor(x)

    def features(self, x: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Return the transfer embedding of a batch.

        Args:
            x: Input batch ``(B, C, X, Y, Z)``.
            pooled: If ``False`` (default, as the authors) the flattened encoder output,
                ``(B, 64·x·y·z)`` (9600 values at 1 mm); if ``True`` its spatial average,
                ``(B, 64)``, the vector the SFCN head itself sees.

        Returns:
            The embedding, shape ``(B, embedding_size)`` or ``(B, 64)``.
        """
        return self.embed(self.encode(x), pooled=pooled)

    def embed(self, fmap: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """The transfer embedding of an encoder map (what :meth:`features` returns for an input).

        Args:
            fmap: Encoder output ``(B, 64, x, y, z)`` (:meth:`encode`).
            pooled: Its spatial average ``(B, 64)`` instead of the flattened map.

        Returns:
            ``(B, embedding_size)`` or ``(B, 64)``.
        """
        if pooled:
            return self.pool(fmap).flatten(1)
        return fmap.flatten(1)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 64-d pooled embedding ``(B, 64)`` (shorthand for ``features(x, pooled=True)``)."""
        return self.features(x, pooled=True)

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Apply the SFCN head (pool → dropout → 1×1×1 conv → log-softmax) to an encoder map.

        Args:
            fmap: Encoder output ``(B, 64, x, y, z)``.

        Returns:
            Log-probabilities (or logits if built with ``log_softmax=False``), ``(B, n_outputs)``.
        """
        out = self.classifier(self.dropout(self.pool(fmap))).flatten(1)
        if self.use_log_softmax:
            out = F.log_softmax(out.float(), dim=1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return log-probabilities ``(B, n_outputs)`` (logits if ``log_softmax=False``)."""
        return self.head(self.encode(x))


class QCHead(nn.Module):
    """The authors' transfer head on the flattened SFCN embedding.

    ``Dropout → Linear(in, hidden) → BatchNorm1d → ReLU → Linear(hidden, hidden) → BatchNorm1d →
    ReLU → Linear(hidden, n_classes)``; it returns logits (use cross-entropy).

    Args:
        in_features: Embedding length (9600 at 1 mm; see :meth:`SFCN.embedding_size`).
        hidden: Units of the two hidden layers (10 in the authors' code).
        dropout: Dropout probability on the embedding (the authors' best: 0.77).
        n_classes: Output classes (:data:`motionqc.qc_task.N_QC_CLASSES` for the poster's task).

    Raises:
        ValueError: If a size is below 1 or ``dropout`` is outside [0, 1).
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 10,
        dropout: float = 0.5,
        n_classes: int = N_QC_CLASSES,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("hidden", hidden),
            ("n_classes", n_classes),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features = int(in_features)
        self.net = nn.Sequential(
            nn.Dropout(float(dropout)),
            nn.Linear(self.in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return class logits ``(B, n_classes)`` for embeddings ``(B, in_features)``."""
        if z.dim() != 2 or z.shape[1] != self.in_features:
            raise ValueError(
                f"QCHead expects embeddings of shape (batch, {self.in_features}), got {tuple(z.shape)}"
            )
        return self.net(z)
