"""The ETL benchmark keeps running against a baked study (its figures are printed, not asserted)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE, run


@pytest.mark.slow
def test_etl_benchmark_prints_throughput_and_memory_at_two_grid_sizes(fast_study: tuple[Path, Path]) -> None:
    study, _ = fast_study
    result = run(
        [sys.executable, TEMPLATE / "benchmarks" / "bench_etl.py", "--study", study, "--years", "3",
         "--small-block-mb", "4"],
        timeout=300,
    )  # fmt: skip
    out = result.stdout
    rows = re.findall(r"^(small|large)\s+(40|320)\s+\d+\s+(\d+)\s+(\d+)\s", out, flags=re.MULTILINE)
    assert len(rows) == 4, out
    assert all(int(windows) > 0 and int(days) >= 3 * 365 for *_, windows, days in rows), out
    assert out.count("peak RSS large/small (8x the cells)") == 2, out
    assert "chunks of 8 cells" in out, out  # the fast study's chunk_cells, read from its study.toml


@pytest.mark.slow
def test_etl_dask_benchmark_compares_in_process_and_local_2(fast_study: tuple[Path, Path]) -> None:
    study, _ = fast_study
    result = run(
        [sys.executable, TEMPLATE / "benchmarks" / "bench_etl_dask.py", "--study", study, "--years", "3",
         "--ny", "2", "--nx", "4"],
        timeout=300,
    )  # fmt: skip
    out = result.stdout
    rows = re.findall(r"^(large|8x)\s+(8|64)\s+\d+\s+(in process|local:2)\s+[\d.]+\s", out, flags=re.MULTILINE)
    assert len(rows) == 4, out
    workers = re.findall(r"^(?:large|8x)\s.*local:2.*\s(\d+)M, (\d+)M$", out, flags=re.MULTILINE)
    assert len(workers) == 2, out  # each local:2 run reports the peaks of its two workers
    assert out.count("every chunk identical in process and on local:2: yes") == 2, out
    assert "driver peak RSS with local:2 flat" in out and out.count("local:2 not slower than in process") == 2, out
