"""The LSTM baseline: a stacked LSTM over the lookback window, classifying the last time step.

`train.model = "lstm"`; its options (`[train.model_options]`) are the keyword
arguments of `LSTMClassifier`: hidden_size, num_layers, dropout. Its gate biases are
chrono-initialised for memories up to the lookback (`labzarr.train.init.chrono_init`).
"""

from __future__ import annotations

import torch
from labzarr.train.init import chrono_init
from torch import nn

from ...etl.categories import N_CLASSES


class LSTMClassifier(nn.Module):
    """Stacked LSTM (batch_first) -> last hidden state -> dropout -> linear head."""

    def __init__(
        self, n_features: int, n_classes: int = N_CLASSES, *, hidden_size: int = 64, num_layers: int = 1,
        dropout: float = 0.0, time_lookback: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=n_features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        if time_lookback:
            chrono_init(self.lstm, time_lookback)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, features) -> (batch, n_classes) logits."""
        _, (h, _) = self.lstm(x)
        return self.head(self.dropout(h[-1]))
