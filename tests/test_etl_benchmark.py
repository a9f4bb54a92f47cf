"""The ETL benchmark keeps running against a baked study (its figures are printed, not asserted)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE, run


@pytest.mark.slow
def test_etl_benchmark_prints_throughput_memory_and_the_loop_comparison(fast_study: tuple[Path, Path]) -> None:
    study, _ = fast_study
    result = run(
        [sys.executable, TEMPLATE / "benchmarks" / "bench_etl.py", "--study", study,
         "--compare-years", "1", "--repeat", "1", "--small-block-mb", "4"],
        timeout=300,
    )  # fmt: skip
    out = result.stdout
    rows = re.findall(r"^(small|large)\s+(40|320)\s+\d+\s+(\d+)\s", out, flags=re.MULTILINE)
    assert len(rows) == 4 and all(int(samples) > 0 for *_, samples in rows), out
    assert out.count("peak RSS large/small (8x the cells)") == 2, out
    assert "400 cells" in out and "results equal: True" in out and "speed-up" in out, out
