"""The results folder's pictures (PNG): loss curve, confusion matrix, a map of a score per grid cell
and observed against predicted classes over time for a few cells.

Each uses matplotlib's Figure directly (no pyplot backend switch, so it is safe inside a notebook)
and is written atomically. Maps are plain lat/lon `pcolormesh` grids: no cartopy needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Training and validation loss per epoch (`history` rows with epoch, train_loss, val_loss)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure((6, 4))
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set(xlabel="epoch", ylabel="weighted cross-entropy", title="Loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion(matrix: list[list[int]], names: Sequence[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix of the classes `names`, counts in the cells."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = _figure((7, 6))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of true class")
    ticks = range(len(names))
    ax.set_xticks(ticks, list(names))
    ax.set_yticks(ticks, list(names))
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in ticks:
        for j in ticks:
            if counts[i, j]:
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    _save(fig, path)


def grid_of(
    lat: np.ndarray, lon: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell `values` placed on the regular (lat, lon) grid of the cells' coordinates: the sorted
    unique latitudes and longitudes and a (lat, lon) array, NaN where no cell is."""
    lats, row = np.unique(np.asarray(lat), return_inverse=True)
    lons, col = np.unique(np.asarray(lon), return_inverse=True)
    grid = np.full((len(lats), len(lons)), np.nan)
    grid[row, col] = values
    return lats, lons, grid


def plot_cell_map(
    lat: np.ndarray, lon: np.ndarray, values: np.ndarray, path: Path, *, title: str, label: str
) -> None:
    """A map (lon, lat) of one value per grid cell, in [0, 1] (e.g. test accuracy); cells without a
    value (NaN, or not stored) are left blank."""
    lats, lons, grid = grid_of(lat, lon, values)
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(lons, lats, np.ma.masked_invalid(grid), shading="nearest", cmap="viridis",
                         vmin=0, vmax=1)  # fmt: skip
    fig.colorbar(mesh, ax=ax, label=label)
    ax.set_aspect(1 / np.cos(np.deg2rad(float(np.mean(lats)))))  # degrees of lon shorter than of lat
    ax.set(xlabel="longitude (°E)", ylabel="latitude (°N)", title=title)
    _save(fig, path)


def _plottable(time: np.ndarray) -> np.ndarray:
    """numpy datetimes as they are; cftime dates (no matplotlib converter without nc-time-axis) as
    decimal years."""
    time = np.asarray(time)
    if time.dtype.kind == "M":
        return time
    return np.array([t.year + (t.dayofyr - 1) / 366 for t in time])


def plot_class_series(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], names: Sequence[str], path: Path
) -> None:
    """Observed against predicted classes over time, one panel per (title, observed, predicted,
    time); classes are numbered 0..len(names) - 1 and drawn as steps."""
    fig = _figure((9, 1.9 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, observed, predicted, time) in zip(axes, panels, strict=True):
        ax.step(_plottable(time), observed, where="post", lw=1.2, color="black", label="observed")
        ax.step(
            _plottable(time),
            predicted,
            where="post",
            lw=1.2,
            color="tab:orange",
            alpha=0.8,
            label="predicted",
        )
        ax.set_yticks(range(len(names)), list(names), fontsize=7)
        ax.set_ylim(-0.5, len(names) - 0.5)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    _save(fig, path)
