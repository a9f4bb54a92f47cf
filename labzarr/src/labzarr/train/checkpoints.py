"""Checkpoints a run can resume from, and only when it is the same run.

A checkpoint is a dict saved with `torch.save`, written atomically (a reader sees the old file or
the whole new one). Resuming checks, in order, that it can be read, that its format `version`
is this code's, that its `settings` (what the study says must match: model, options, features,
hyper-parameters) equal the run's, that it was written by as many processes as this run has,
and that its best model is beside it; each refusal is one line that ends with how to start
fresh. The study decides what goes into `settings` and how to word their differences.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import StudyError

BEST = "best.pt"


class CheckpointError(StudyError):
    """The checkpoint cannot be read or resumed from."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint was made with another model, options, features or settings."""


def start_over(path: Path) -> str:
    """How to start fresh: the end of every message refusing to resume from `path`."""
    return (
        f"start over with `train --fresh` (replaces the checkpoints in {path.parent.parent}) "
        "or use a new --out folder"
    )


def save(path: Path, state: dict[str, Any]) -> None:
    """`torch.save` to a temporary file beside `path`, then rename it into place."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(
    path: Path,
    *,
    version: int,
    settings: dict[str, Any],
    world_size: int,
    differences: Callable[[dict[str, Any], dict[str, Any]], str],
) -> dict[str, Any]:
    """The checkpoint at `path`, if this run may resume from it; `differences(saved, now)` words
    how its settings differ from the run's."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({exc}); {start_over(path)}") from None
    if state.get("version") != version:
        raise CheckpointMismatch(
            f"checkpoint {path} was written by another version of this study's training code "
            f"(checkpoint format {state.get('version')!r}, this code writes {version}); {start_over(path)}"
        )
    if state.get("settings") != settings:
        raise CheckpointMismatch(
            f"cannot resume from {path}: {differences(state.get('settings') or {}, settings)}; "
            + start_over(path)
        )
    written_by = state.get("world_size", 1)
    if written_by != world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by a run of {written_by} process(es) and this run has "
            f"{world_size}: resume with the same number (torchrun --nproc_per_node={written_by}, or plain "
            "`train` for 1; each rank's share of the windows depends on it), or use another --out folder"
        )
    if not (path.parent / BEST).is_file():
        raise CheckpointMismatch(
            f"checkpoint {path} has no {BEST} beside it (a run with --fresh stopped before its first "
            f"epoch ended?); {start_over(path)}"
        )
    return state


def restore(net: nn.Module, saved: dict[str, Any], path: Path, what: str) -> None:
    """The checkpoint's weights into `net`; one line naming `what` when they do not fit (the
    model's code changed)."""
    try:
        net.load_state_dict(saved["model"])
    except RuntimeError as exc:
        lines = str(exc).splitlines()  # "Error(s) in loading state_dict for X:", then what misfits
        first = (lines[1] if len(lines) > 1 else lines[0]).strip()
        first = first if len(first) <= 200 else first[:200] + "..."
        raise CheckpointMismatch(
            f"the weights in {path} do not fit {what} as its code is now ({first}); {start_over(path)}"
        ) from None
