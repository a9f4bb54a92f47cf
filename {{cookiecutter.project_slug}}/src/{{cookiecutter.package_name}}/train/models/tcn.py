"""A temporal convolution network (TCN): causal dilated 1-D convolutions in residual blocks.

`train.model = "tcn"`; its options (`[train.model_options]`) are the keyword
arguments of `TCN`: channels, kernel_size, levels, dropout. Block i convolves
with dilation 2**i, twice, so `levels` blocks see 1 + 2 (kernel_size - 1)
(2**levels - 1) time steps; by default just enough levels that this receptive
field covers the whole lookback window (`time_lookback`, filled in from
etl.time_lookback). The head reads the last time step, which has seen the window.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...etl.categories import N_CLASSES


def receptive_field(levels: int, kernel_size: int) -> int:
    """Time steps the last output of `levels` blocks depends on."""
    return 1 + 2 * (kernel_size - 1) * (2**levels - 1)


def levels_for(lookback: int, kernel_size: int) -> int:
    """The fewest levels whose receptive field covers `lookback` steps."""
    levels = 1
    while receptive_field(levels, kernel_size) < lookback:
        levels += 1
    return levels


class CausalConv1d(nn.Conv1d):
    """A Conv1d padded on the left only: output t sees inputs t, t - d, ..., never the future."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class TemporalBlock(nn.Module):
    """Two causal dilated convolutions (ReLU, dropout) plus a residual connection."""

    def __init__(
        self, in_channels: int, channels: int, kernel_size: int, dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(in_channels, channels, kernel_size, dilation)
        self.conv2 = CausalConv1d(channels, channels, kernel_size, dilation)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(in_channels, channels, 1) if in_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.conv1(x)))
        out = self.dropout(F.relu(self.conv2(out)))
        return F.relu(out + self.skip(x))


class TCN(nn.Module):
    """Residual blocks of causal dilated convolutions -> the last time step -> linear head."""

    def __init__(
        self, n_features: int, n_classes: int = N_CLASSES, *, channels: int = 32, kernel_size: int = 3,
        levels: int = 0, dropout: float = 0.0, time_lookback: int = 180,
    ) -> None:  # fmt: skip
        super().__init__()
        if channels < 1 or kernel_size < 2 or levels < 0 or not 0 <= dropout < 1:
            raise ValueError(
                f"TCN options: channels >= 1, kernel_size >= 2, levels >= 0 (0: enough to cover the "
                f"lookback), 0 <= dropout < 1; got {channels}, {kernel_size}, {levels}, {dropout}"
            )
        self.levels = levels or levels_for(time_lookback, kernel_size)
        self.blocks = nn.Sequential(
            *(
                TemporalBlock(n_features if i == 0 else channels, channels, kernel_size, 2**i, dropout)
                for i in range(self.levels)
            )
        )
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, features) -> (batch, n_classes) logits."""
        return self.head(self.blocks(x.transpose(1, 2))[:, :, -1])
