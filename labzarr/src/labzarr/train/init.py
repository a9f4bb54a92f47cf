"""Weight initialisations a study's models can share.

`chrono_init` (Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018): an LSTM
starts with forget-gate biases log(U(1, T - 1)) and input-gate biases their negatives, so its
units begin with memories spread over 1 to T steps. With the default zero biases every unit
forgets half of its state each step, and learning to carry a months-long mean across a
180-step window takes many epochs; chrono-initialised, an LSTM learns it in one or two.
"""

from __future__ import annotations

import torch
from torch import nn


def chrono_init(lstm: nn.LSTM, max_steps: int, generator: torch.Generator | None = None) -> None:
    """Set every layer's gate biases of `lstm` for memories of 1 to `max_steps` steps (in place)."""
    if max_steps < 3:
        return
    hidden = lstm.hidden_size
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
            forget = torch.log(torch.empty(hidden).uniform_(1.0, max_steps - 1.0, generator=generator))
            b_ih.zero_()
            b_hh.zero_()
            b_ih[hidden : 2 * hidden] = forget  # gates in PyTorch's order: input, forget, cell, output
            b_ih[:hidden] = -forget
