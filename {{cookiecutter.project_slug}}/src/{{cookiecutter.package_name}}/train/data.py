"""How this study's training draws its batches: one loader per split of the served series, with
the settings of study.toml's [train] and [etl] (the machinery is labzarr's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labzarr.store_format import SPLITS
from labzarr.train.loader import LoaderError, Series, WindowLoader

if TYPE_CHECKING:
    from ..config import Config


def make_loader(
    cfg: Config,
    series: Series,
    split: str,
    *,
    shuffle: bool | None = None,
    progress: bool = True,
    start_epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> WindowLoader:
    """The loader of one split as configured in [train] (training data shuffled, others not; only
    the shuffled training split draws `train.windows_per_epoch` windows per epoch)."""
    if split not in SPLITS:
        raise LoaderError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    t = cfg.train
    shuffle = split == "train" if shuffle is None else shuffle
    return WindowLoader(
        series,
        split,
        batch_size=t.batch_size,
        lookback=cfg.etl.time_lookback,
        stride=t.sample_stride,
        shuffle=shuffle,
        seed=t.seed,
        rank=rank,
        world_size=world_size,
        progress=progress,
        desc=split,
        start_epoch=start_epoch,
        windows_per_epoch=t.windows_per_epoch if split == "train" and shuffle else 0,
    )
