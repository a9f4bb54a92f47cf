"""A results folder: kept out of git, and the files a classification run writes into it.

`write_results` writes the summary, the history, the per-class reports and the loss and
confusion-matrix plots; `write_cell_results` shows where the model is right (per-cell test
accuracy as a table and a lat/lon map, and observed against predicted classes over time).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write, write_text
from .metrics import accuracy_by_group
from .plots import plot_cell_map, plot_class_series, plot_confusion, plot_history

GITIGNORE = """\
# Written by the training: a results folder (checkpoints, metrics, plots) stays out of git,
# whatever its name. Delete this file to commit the folder.
*
"""


def ignore_in_git(out: Path) -> None:
    """Write `out/.gitignore` (ignore everything) when `out` is a new or empty folder: the results
    folder of this run. A folder that holds other files (`--out .`) is left as it is."""
    if out.is_dir() and any(out.iterdir()):
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / ".gitignore", GITIGNORE)


def write_results(
    out: Path, summary: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], names: Sequence[str]
) -> None:
    """summary.json, history.csv (and loss.png) of `summary["history"]`, classification_report.txt
    of each split's `report` in `results` and confusion_matrix.png of `results["test"]`."""
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    def history_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(summary["history"][0]))
            writer.writeheader()
            writer.writerows(summary["history"])

    if summary["history"]:
        atomic_write(out / "history.csv", history_csv)
        plot_history(summary["history"], out / "loss.png")
    write_text(
        out / "classification_report.txt", "\n".join(f"== {s} ==\n{m['report']}" for s, m in results.items())
    )
    plot_confusion(
        results["test"]["confusion_matrix"],
        names,
        "Confusion matrix (test)",
        out / "confusion_matrix.png",
    )


def write_cell_results(
    out: Path, test: Mapping[str, np.ndarray], lat: np.ndarray, lon: np.ndarray, time: np.ndarray,
    n_cells: int, names: Sequence[str],
) -> None:  # fmt: skip
    """Where a model is right, from its test windows (`test`: arrays cells, ends, y, pred):
    test_by_cell.csv and accuracy_map.png (the test accuracy of every cell on a lat/lon map), and
    test_series.png (observed and predicted classes over the test period of the worst, median and
    best cell)."""
    cells, y, pred = test["cells"], test["y"], test["pred"]
    accuracy = accuracy_by_group(cells, y, pred, n_cells)
    windows = np.bincount(cells, minlength=n_cells)

    def by_cell(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["cell", "lat", "lon", "test_windows", "test_accuracy"])
            writer.writerows((c, lat[c], lon[c], windows[c], f"{accuracy[c]:.6f}") for c in range(n_cells))

    atomic_write(out / "test_by_cell.csv", by_cell)
    plot_cell_map(lat, lon, accuracy, out / "accuracy_map.png", title="Test accuracy per cell",
                  label="accuracy of the test windows")  # fmt: skip
    scored = np.flatnonzero(windows > 0)
    ranked = scored[np.argsort(accuracy[scored], kind="stable")]
    panels = []
    for c in dict.fromkeys(ranked[[0, len(ranked) // 2, -1]].tolist()):  # worst, median, best
        mine = cells == c
        title = f"cell {c} ({lat[c]:.2f}°N, {lon[c]:.2f}°E): test accuracy {accuracy[c]:.2f}"
        panels.append((title, y[mine], pred[mine], time[test["ends"][mine]]))
    plot_class_series(panels, names, out / "test_series.png")
