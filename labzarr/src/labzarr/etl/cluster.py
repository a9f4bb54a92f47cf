"""Where the ETL's blocks run: in this process, or as tasks on dask.distributed workers.

`etl.dask_scheduler` picks it:

* `""` (default): every block in this process, one after another;
* `"local:N"`: a `distributed.LocalCluster` of N worker processes of one thread each, started for
  this run and closed at its end (also on failure);
* `"tcp://host:port"`: a running scheduler, e.g. one started by dask-jobqueue on a cluster; its
  workers must import this package and reach the raw inputs and `data.zarr_dir` under the same paths.

Both runners take the same task function and items, so a block's result and the bytes it writes
do not depend on where it ran. A cluster starts in a background thread, so its workers start
while the driver validates the inputs; its client is not made dask's default (the driver's own
small computations stay in the driver), and `LOCAL_CLUSTER_CONFIG` tunes the workers it starts.
On a worker, a task reads its inputs with dask's synchronous scheduler (one worker thread per
task; no nested tasks). At most two tasks per worker thread are in flight: after a failure
nothing new is submitted, and the ETL waits for the running tasks to end before the temporary
store is removed, so no task writes into a removed folder.
A task that raises or a worker that dies fails the ETL with an `EtlError` saying which block and
what to do. With `local:N`, a worker that dies fails its task at once (`allowed-failures` 0):
locally that is nearly always memory, which a retry would exhaust again; an external scheduler
keeps its own retry setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from ..errors import StudyError
from .errors import EtlError

log = logging.getLogger(__name__)
LOCAL = re.compile(r"local:(\d+)")
IN_FLIGHT_PER_THREAD = 2
LOCAL_CLUSTER_CONFIG = {
    # a worker that dies fails its task at once (see the module docstring)
    "distributed.scheduler.allowed-failures": 0,
    # glibc's own malloc tuning: dask sets MALLOC_TRIM_THRESHOLD_ for its workers, which also fixes
    # glibc's mmap threshold at 128 kB, so every large numpy temporary of a block became a fresh
    # mapping (4x the system time of an in-process run, +30 % CPU, measured on the 8x grid)
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # the statistical profiler (the dashboard's profile page) samples each worker every 10 ms:
    # about 6 of 32 CPU seconds of a local:2 run on the 8x grid (one measurement)
    "distributed.worker.profile.enabled": False,
}
Task = Callable[[Any, Any], Any]  # fn(item, shared) -> result (no TypeVars: Python 3.11 and 3.12+ alike)


class Runner(Protocol):
    workers: int  # threads that run tasks at once (1 in process)

    def map(
        self, fn: Task, items: Iterable[Any], shared: Any, what: Callable[[Any], str]
    ) -> Iterator[tuple[Any, Any]]:
        """`fn(item, shared)` for every item; yields (item, result) as each ends (in any order).
        `what(item)` names the item in error messages."""
        ...


def check_address(address: str) -> None:
    """Refuse a malformed `etl.dask_scheduler` before any work starts."""
    match = LOCAL.fullmatch(address)
    if address == "" or (match and int(match[1]) >= 1) or re.fullmatch(r"tcp://\S+:\d+", address):
        return
    raise EtlError(
        f'etl.dask_scheduler = {address!r}: use "" (this process), "local:N" (N >= 1 worker '
        'processes started for this run) or a scheduler address such as "tcp://host:8786"'
    )


@contextlib.contextmanager
def runner(address: str) -> Iterator[Runner]:
    """The runner for `etl.dask_scheduler`. A cluster starts (or the scheduler is reached) in the
    background, so its workers start while the caller validates the inputs; on exit the client,
    then a cluster it started, are closed."""
    check_address(address)
    if not address:
        yield InProcess()
        return
    try:
        import distributed  # noqa: F401  (here, so a missing package is named before any work)
    except ImportError:
        raise EtlError(
            f"etl.dask_scheduler = {address!r} needs dask.distributed: pip install distributed "
            "(or the study's etl extra)"
        ) from None
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(1, thread_name_prefix="etl-dask") as pool:
        client = pool.submit(_connect, address, stack)
        try:
            yield OnCluster(client)
        finally:
            client.exception()  # let the start end before the stack closes what it opened


def _connect(address: str, stack: contextlib.ExitStack) -> Any:
    """A client of a LocalCluster started for `local:N`, or of the scheduler at `address`; both
    entered into `stack`, the client last (closed first). The client is not made dask's default:
    the driver's own small computations stay in this process."""
    import dask
    from distributed import Client, LocalCluster

    if match := LOCAL.fullmatch(address):
        with dask.config.set(LOCAL_CLUSTER_CONFIG):
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=int(match[1]),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address="127.0.0.1:0",
                )
            )
        client = stack.enter_context(Client(cluster, set_as_default=False))
    else:
        try:
            client = stack.enter_context(Client(address, timeout="30s", set_as_default=False))
        except (OSError, TimeoutError) as exc:
            raise EtlError(
                f"cannot reach the dask scheduler at {address} ({type(exc).__name__}: {exc}); start it "
                "(e.g. with dask-jobqueue) or fix etl.dask_scheduler"
            ) from None
    workers = client.scheduler_info().get("workers", {})
    log.info(
        "dask: %s, %d workers, dashboard %s (its pages need bokeh installed)",
        address,
        len(workers),
        client.dashboard_link,
    )
    return client


class InProcess:
    """Every item in this process, in order."""

    workers = 1

    def map(
        self, fn: Task, items: Iterable[Any], shared: Any, what: Callable[[Any], str]
    ) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, fn(item, shared)


def _on_worker(fn: Task, item: Any, shared: Any) -> Any:
    """Run a task with dask's synchronous scheduler for the reads inside it (no nested tasks)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return fn(item, shared)


class OnCluster:
    """Items as dask tasks on the workers of a client (started in the background), a bounded
    number in flight; every exit waits for the tasks it submitted that are still running."""

    def __init__(self, client: Future[Any]) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        return self._client.result()  # the start's own error (e.g. no scheduler there), if any

    @property
    def workers(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def map(
        self, fn: Task, items: Iterable[Any], shared: Any, what: Callable[[Any], str]
    ) -> Iterator[tuple[Any, Any]]:
        from distributed import as_completed

        client = self.client
        shared_future = client.scatter(shared, broadcast=True, hash=False)
        todo = iter(items)
        running: dict[Any, Any] = {}
        done = as_completed(loop=client.loop)  # this client's, not a default one

        def submit() -> None:
            limit = IN_FLIGHT_PER_THREAD * self.workers
            while len(running) < limit and (item := next(todo, None)) is not None:
                future = client.submit(_on_worker, fn, item, shared_future, pure=False)
                running[future] = item
                done.add(future)

        submit()
        try:
            for future in done:
                item = running.pop(future)
                try:
                    result = future.result()
                except (Exception, asyncio.CancelledError) as exc:
                    raise _failure(exc, what(item)) from None
                yield item, result
                submit()
        finally:  # on a failure (or Ctrl-C): the running tasks end before the store is removed
            for future in running:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    future.exception()  # waits for the task to end, whatever its outcome


def _failure(exc: BaseException, what: str) -> StudyError:
    """One-line error for a failed task: the user's own error as it is, else what happened and what to do."""
    from distributed import KilledWorker

    if isinstance(exc, StudyError):
        return exc
    if isinstance(exc, KilledWorker):
        return EtlError(
            f"a dask worker died while processing {what} (killed, or out of memory: lower etl.block_mb "
            "or give the workers more memory); no store was written, re-run the ETL"
        )
    detail = " ".join(str(exc).split())  # one line, whatever the worker's message
    return EtlError(
        f"processing {what} failed on a dask worker ({type(exc).__name__}: {detail}); no store was "
        "written, fix the cause and re-run the ETL"
    )
