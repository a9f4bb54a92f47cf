"""Engineered features of lookback windows: what a simple model is given instead of the sequence.

A baseline that a sequence model must beat is fairer when it gets the summaries an analyst would
compute by hand. Per input feature of a window: the last value, the means over the last 7, 30 and
90 days (scaled to the time step: 1 and 3 months for monthly steps; never longer than the window)
and the trend over the whole window (the least-squares slope per step). They are computed on the
loader's device, batch by batch, so a baseline costs one pass over the windows it is fitted on, and
a pass that scores a model can hand them on a chunk at a time (`tap`) instead of holding them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

MEAN_DAYS = (7, 30, 90)  # the trailing means, in days
DAYS_PER_STEP = {"daily": 1.0, "monthly": 365.25 / 12}


def mean_steps(time_step: str, lookback: int) -> tuple[int, ...]:
    """The trailing means' lengths in steps of `time_step`, at least 1, at most `lookback`, distinct."""
    if time_step not in DAYS_PER_STEP:
        raise ValueError(f"unknown time step {time_step!r}; allowed: {', '.join(DAYS_PER_STEP)}")
    per_step = DAYS_PER_STEP[time_step]
    return tuple(sorted({min(lookback, max(1, round(d / per_step))) for d in MEAN_DAYS}))


def feature_names(features: list[str], steps: tuple[int, ...]) -> list[str]:
    """Names of the columns of `window_features`, in their order."""
    kinds = ["last", *(f"mean{n}" for n in steps), "trend"]
    return [f"{name}_{kind}" for kind in kinds for name in features]


def window_features(x: torch.Tensor, steps: tuple[int, ...]) -> torch.Tensor:
    """Features (batch, (2 + len(steps)) * F) of windows x (batch, lookback, F): the last values,
    the trailing means over `steps` steps, the least-squares slopes (grouped by kind, as
    `feature_names`)."""
    x = x.float()
    lookback = x.shape[1]
    t = torch.arange(lookback, dtype=x.dtype, device=x.device)
    t = t - t.mean()
    denominator = (t * t).sum().clamp_min(1e-12)
    slope = torch.einsum("blf,l->bf", x, t) / denominator
    means = [x[:, -n:].mean(dim=1) for n in steps]
    return torch.cat([x[:, -1], *means, slope], dim=1)


def collect(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: tuple[int, ...],
    max_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Window features (samples, columns) float32 and labels of a loader's batches, up to
    `max_samples` windows (stopping the pass there); one transfer from the device at the end."""
    out, labels, n = [], [], 0
    for xb, yb in batches:
        out.append(window_features(xb, steps))
        labels.append(yb)
        n += len(yb)
        if max_samples is not None and n >= max_samples:
            break
    if not out:
        raise ValueError("no windows to compute features of")
    return torch.cat(out)[:max_samples].cpu().numpy(), torch.cat(labels)[:max_samples].cpu().numpy()


def tap(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: tuple[int, ...],
    chunk: int,
    consume: Callable[[np.ndarray, int], None],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `batches` unchanged and hand the window features of each run of at least `chunk`
    windows (and of the rest at the end) to `consume(features, first)`, `first` being the index of
    the run's first window: at most `chunk` plus one batch of windows' features are held."""
    pending: list[torch.Tensor] = []
    first = held = 0
    for xb, yb in batches:
        pending.append(window_features(xb, steps))
        held += len(xb)
        if held >= chunk:
            consume(torch.cat(pending).cpu().numpy(), first)
            pending.clear()
            first, held = first + held, 0
        yield xb, yb
    if pending:
        consume(torch.cat(pending).cpu().numpy(), first)
