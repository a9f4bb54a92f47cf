"""The baseline model: an LSTM over a lookback window, classifying the last day's category.

The interface is deliberately small so the model is easy to replace: any
`torch.nn.Module` whose `forward` maps a float32 tensor of shape
`(batch, time_lookback, n_features)` to logits of shape `(batch, n_classes)`
works with `train.loop`. To swap it, write such a module and return it from
`build_model` (its keyword arguments come from the [train] section).
"""

from __future__ import annotations

import torch
from torch import nn

from ..etl.categories import N_CLASSES


class LSTMClassifier(nn.Module):
    """Stacked LSTM (batch_first) -> last hidden state -> dropout -> linear head."""

    def __init__(
        self, n_features: int, n_classes: int = N_CLASSES, *, hidden_size: int = 64, num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=n_features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, features) -> (batch, n_classes) logits."""
        _, (h, _) = self.lstm(x)
        return self.head(self.dropout(h[-1]))


def build_model(
    n_features: int, n_classes: int = N_CLASSES, *, hidden_size: int = 64, num_layers: int = 1,
    dropout: float = 0.0,
) -> nn.Module:  # fmt: skip
    """The model `train.loop` trains; replace the body to try another architecture."""
    return LSTMClassifier(
        n_features, n_classes, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout
    )
