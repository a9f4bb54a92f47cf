"""One pass over a split's batches, on one rank or many: the mechanics of a classification epoch.

`run_epoch` trains (with an optimizer) or evaluates (without), with mixed precision on CUDA and
DDP's Join for ranks with uneven shares; nothing is read back from the device until the pass
ends. `mean_loss` and `gather_codes` combine the ranks' tallies; `rank_report` and
`check_in_step` verify after each epoch that the ranks still hold the same weights. The loss,
the optimizer, early stopping and the metrics are the study's (its training recipe).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import StudyError
from .distributed import Ranks, state_digest, uneven_inputs


class EpochError(StudyError):
    """A pass cannot give a result (an empty split, ranks out of step)."""


@dataclass
class Pass:
    """One rank's tallies of one pass over its share of a split: what is combined across ranks."""

    loss_sum: torch.Tensor  # float64, on the device: summed over windows
    count: int  # windows
    batches: int  # optimizer steps when training
    y_true: np.ndarray  # int8 codes (evaluation only; empty when training)
    y_pred: np.ndarray


def run_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Pass:
    """One pass: trains when an optimizer is given, else evaluates.

    Returns the summed loss and (when evaluating) the true and predicted codes of
    every window. Nothing is read back from the device until the pass is over. A
    DDP model trains under Join: ranks may run different numbers of batches.
    """
    training = optimizer is not None
    model.train(training)
    amp = device.type == "cuda"
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = steps = 0
    y_true: list[torch.Tensor] = []
    y_pred: list[torch.Tensor] = []
    joined = uneven_inputs(model) if training else contextlib.nullcontext()
    with torch.set_grad_enabled(training), joined:
        for xb, yb in batches:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = model(xb)
                loss = loss_fn(logits.float(), yb)
            if training:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None and scaler.is_enabled():
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            else:
                y_true.append(yb.to(torch.int8))
                y_pred.append(logits.argmax(dim=1).to(torch.int8))
            total += loss.detach() * len(yb)
            count += len(yb)
            steps += 1
    if y_true:
        return Pass(total, count, steps, torch.cat(y_true).cpu().numpy(), torch.cat(y_pred).cpu().numpy())
    return Pass(total, count, steps, np.empty(0, np.int8), np.empty(0, np.int8))


def mean_loss(ranks: Ranks, done: Pass) -> float:
    """The mean loss of a pass over every rank's share (the pass's one read from the device)."""
    total, count = ranks.sum([done.loss_sum, done.count])
    if count == 0:
        raise EpochError("no windows in this split; check the ETL output")
    return total / count


def gather_codes(ranks: Ranks, done: Pass) -> tuple[np.ndarray, np.ndarray] | None:
    """The true and predicted codes of every rank's share, on rank 0 (None on the other ranks)."""
    shares = ranks.gather((done.y_true, done.y_pred))
    if shares is None:
        return None
    return np.concatenate([t for t, _ in shares]), np.concatenate([p for _, p in shares])


def rank_report(net: nn.Module, optimizer: torch.optim.Optimizer, samples: int) -> dict[str, Any]:
    """What rank 0 gathers from each rank after an epoch: its RNG state (for the checkpoint),
    the windows it trained on, and a digest of its weights and optimizer state."""
    return {
        "rng": torch.get_rng_state(),
        "samples": samples,
        "state": state_digest(net.state_dict(), optimizer.state_dict()),
    }


def check_in_step(peers: list[dict[str, Any]], epoch: int) -> list[str]:
    """The ranks' state digests; an EpochError if they differ (the ranks drifted apart: a bug)."""
    digests = [p["state"] for p in peers]
    if len(set(digests)) > 1:
        raise EpochError(
            f"after epoch {epoch} the ranks hold different weights or optimizer states (sha256 "
            f"{', '.join(d[:12] for d in digests)}): the data-parallel steps went out of step; "
            "please report this with the command that ran"
        )
    return digests
