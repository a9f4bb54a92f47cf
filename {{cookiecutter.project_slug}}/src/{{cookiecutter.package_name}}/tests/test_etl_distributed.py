"""The ETL on dask.distributed: worker processes (`etl.dask_scheduler = "local:2"`) write the same
chunks as the in-process run; on a running scheduler (`tcp://...`) a task that raises fails the
ETL with its error, and a worker that dies fails a `local:2` run with one clear line; no store
and no temporary folder is left, and a cluster the ETL started is closed."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator

import psutil
import pytest
from labzarr.etl.errors import EtlError, EtlInputError

from ..config import Config
from ..etl.pipeline import run_etl
from ..synthetic import MODEL_FILE
from .etl_support import leftovers, manifest, tiny_datasets, write_inputs

PIPELINE_LOG = f"{__package__.rsplit('.', 1)[0]}.etl.pipeline"


def worker_processes() -> list[psutil.Process]:
    """This process's live children started by multiprocessing (the dask workers of a LocalCluster)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:  # ended meanwhile
            continue
        if "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
            found.append(child)
    return found


class OnMessage(logging.Handler):
    """Runs an action, once, in the ETL's own thread when the pipeline logs a message containing `text`."""

    def __init__(self, text: str, action: Callable[[], object]) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.action, self.fired = text, action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and self.text in record.getMessage():
            self.fired = True
            self.action()


@pytest.fixture
def on_message() -> Iterator[list[OnMessage]]:
    handlers: list[OnMessage] = []
    logger = logging.getLogger(PIPELINE_LOG)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handlers
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


def hook(handlers: list[OnMessage], text: str, action: Callable[[], object]) -> OnMessage:
    handler = OnMessage(text, action)
    logging.getLogger(PIPELINE_LOG).addHandler(handler)
    handlers.append(handler)
    return handler


def on_cluster(cfg: Config, scheduler: str = "local:2", **extra: object) -> Config:
    """Two worker processes; 1 MB blocks, so the tiny grid makes several survey and write tasks."""
    return cfg.override({"etl.dask_scheduler": scheduler, "etl.block_mb": 1, **extra})


@pytest.fixture(scope="class")
def scheduler() -> Iterator[str]:
    """A running scheduler with two worker processes, as dask-jobqueue would start: its address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("address", ["local", "local:0", "host:8786", "tcp://host"])
def test_a_malformed_scheduler_is_refused_before_any_work(tiny_inputs: Config, address: str) -> None:
    with pytest.raises(EtlError, match=r"etl\.dask_scheduler = .*: use \"\" \(this process\), \"local:N\""):
        run_etl(tiny_inputs.override({"etl.dask_scheduler": address}))
    assert leftovers(tiny_inputs) == []


@pytest.mark.scaleout
def test_local_cluster_writes_the_same_chunks_as_in_process(tiny_inputs: Config, caplog) -> None:
    run_etl(tiny_inputs)
    in_process = manifest(tiny_inputs.store_path)["arrays"]
    with caplog.at_level(logging.DEBUG, logger=PIPELINE_LOG):
        run_etl(on_cluster(tiny_inputs), overwrite=True)
    assert manifest(tiny_inputs.store_path)["arrays"] == in_process  # every chunk's sha256, shapes, chunks
    assert "dask: local:2, 2 workers, dashboard http://127.0.0.1:" in caplog.text
    assert caplog.text.count("wrote the store's cells") == 3  # 10 cells with data, chunks of 4
    assert leftovers(tiny_inputs) == [tiny_inputs.store_path.name]
    assert worker_processes() == []  # the cluster was closed


@pytest.mark.scaleout
class TestOnARunningScheduler:
    """Failures on a scheduler the ETL did not start (`tcp://`): it stays up, the store goes."""

    def test_a_task_that_raises_fails_the_etl_and_leaves_nothing(
        self, tiny_config: Config, scheduler: str
    ) -> None:
        """Labels out of range in the reference are found by a worker: its error, as in process."""
        model, reference = tiny_datasets(tiny_config)
        bad = reference.drought_category.where(reference.lat < reference.lat.max(), 12)  # the last row
        write_inputs(tiny_config, model, reference.assign(drought_category=bad))
        message = r"reference\.nc: variable 'drought_category': \d+ values are not category codes"
        with pytest.raises(EtlInputError, match=message):
            run_etl(on_cluster(tiny_config, scheduler))
        assert leftovers(tiny_config) == []

    def test_an_input_removed_mid_run_fails_the_etl_with_the_block_named(
        self, tiny_inputs: Config, scheduler: str, on_message: list[OnMessage]
    ) -> None:
        """The driver has validated the inputs; the file is gone when the workers open it."""
        model_file = tiny_inputs.path(tiny_inputs.data.raw_dir) / MODEL_FILE
        hook(on_message, "split test", model_file.unlink)  # logged before the blocks start
        with pytest.raises(EtlError, match=r"processing the grid's rows 0\.\.\d+, .* failed on a dask worker "
                           r"\((FileNotFoundError|OSError).*re-run the ETL$") as failure:  # fmt: skip
            run_etl(on_cluster(tiny_inputs, scheduler))
        assert "\n" not in str(failure.value)
        assert leftovers(tiny_inputs) == []


@pytest.mark.scaleout
def test_a_worker_killed_mid_run_fails_the_etl_and_leaves_nothing(
    tiny_inputs: Config, on_message: list[OnMessage]
) -> None:
    def kill_a_worker() -> None:  # after the first block is written, others are running on both workers
        victim = worker_processes()[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)

    killed = hook(on_message, "wrote the store's cells", kill_a_worker)
    cfg = on_cluster(tiny_inputs, **{"etl.chunk_cells": 1})  # 10 cells: 5 write tasks of 2 cells
    with pytest.raises(EtlError, match=r"^a dask worker died while processing the store's cells \d+\.\.\d+ "
                       r"\(killed, or out of memory.*re-run the ETL$"):  # fmt: skip
        run_etl(cfg)
    assert killed.fired
    assert leftovers(tiny_inputs) == []
    assert worker_processes() == []
