"""CPU threads of a training process: how many intra-op threads, and how idle ones wait.

Why: torch's bundled libgomp makes a waiting thread spin (about 300,000 turns, GOMP_SPINCOUNT)
before it sleeps. An LSTM step is hundreds of small parallel regions (about 922 fork/joins with
2 threads), and on a shared 2-core machine every join can wait a scheduler slice for a partner
thread that was descheduled: one step took 1.01 s with torch's default of 2 threads beside a
busy process, 0.25 s with 1 thread and 0.23 s with 2 threads that sleep while waiting
(`OMP_WAIT_POLICY=passive`); with both cores free, 2 threads gained only 1.17x for 1.89 cores.

So, in two steps:

1. `prepare_threads()`, before the process imports torch: puts `OMP_WAIT_POLICY=passive` in
   the environment (libgomp reads it once, when torch loads it; later it has no effect);
2. `apply_threads(model)`, once the model is built: sets `torch.set_num_threads` from the
   cores this process may use (CPU affinity, the cgroup's CPU quota, divided among the
   torchrun ranks of this machine) and the model: a small recurrent model gets one thread.

The choice depends on the machine's allotment and the model, never on the momentary load, so
two runs of one seed on one machine use the same thread count (and give the same numbers).
A user's own choice wins: `OMP_NUM_THREADS` or `OMP_WAIT_POLICY` in the environment, or a
`torch.set_num_threads(n)` made before training (n other than torch's default). Under torchrun,
`OMP_NUM_THREADS=1` is torchrun's own default for several ranks and is not taken as a choice.
Both return a plain record (dict) of what was chosen and why, for `summary.json`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

WAIT_POLICY = "passive"
# Set beside OMP_WAIT_POLICY by prepare_threads: a child process (a test's CLI run, a notebook's
# kernel) inheriting the policy's choice then records it as the policy's, not as a user's.
POLICY_MARK = "LABZARR_WAIT_POLICY"
# A recurrent model below this many parameters runs on one thread: its step is a chain of small
# regions, one per time step (the default LSTM, hidden 32: 5k parameters). Measured on a shared
# 2-core machine (load 3-7; benchmarks/bench_threads.py and the same step at other sizes), one
# thread against two passive ones: hidden 64 0.43-0.48 s against 0.43-0.47 s per step, hidden
# 128 0.47-0.54 s against 0.39-0.41 s, hidden 256 (266k) 2.5-3.0 s against 2.9-3.3 s, hidden 512
# (1.1M) 6.4 s against 6.4 s: no consistent gain from a second thread, at 1/3 to 1/25 of the
# involuntary context switches and 0-10 % less CPU time.
# On idle cores a second thread gave at most 1.17x (issue 20, spinning waits). Larger recurrent
# models were not measured: they get the cores.
SMALL_RECURRENT_PARAMETERS = 2_000_000
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")

_state: dict[str, Any] = {"prepared": None, "set_by_us": None}


def _affinity() -> int:
    """CPUs this process may run on (macOS and Windows have no affinity call: all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota(cpu_max: str | None) -> float | None:
    """CPUs granted by a cgroup v2 `cpu.max` ('max 100000' or '150000 100000'); None: no limit."""
    quota, _, period = (cpu_max or "").partition(" ")
    if not (quota.isdigit() and period.isdigit() and int(period)):
        return None  # 'max', or a file this parser does not know: no limit it can read
    return int(quota) / int(period)


def _cfs_quota(quota: str | None, period: str | None) -> float | None:
    """CPUs granted by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; None: no limit (-1)."""
    if not (quota and quota.isdigit() and period and period.isdigit() and int(quota) and int(period)):
        return None  # -1: no limit
    return int(quota) / int(period)


def _ancestors(mount: Path, relative: str) -> list[Path]:
    """`mount/relative` and each parent folder up to `mount` (a limit anywhere above binds too)."""
    folder = mount / relative.strip("/")
    folders = [folder]
    while folder != mount and mount in folder.parents:
        folder = folder.parent
        folders.append(folder)
    return folders


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The CPUs this process's cgroup may use per period (the smallest quota on its path, cgroup v2
    `cpu.max` or v1 `cpu.cfs_quota_us`), or None when none is set. `root` is the cgroup mount and
    `self_cgroup` the process's membership file (tests pass fakes)."""
    limits: list[float] = []
    for line in (_read(self_cgroup) or "").splitlines():
        if line.count(":") < 2:
            continue
        _, controllers, relative = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            for folder in _ancestors(root, relative):
                limits += filter(None, [_quota(_read(folder / "cpu.max"))])
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            mount = next(
                (root / n for n in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / n).is_dir()), root
            )
            for folder in _ancestors(mount, relative):
                quota = _cfs_quota(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
                limits += filter(None, [quota])
    return min(limits) if limits else None


def usable_cores(
    affinity: int | None = None, *, root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP
) -> dict[str, Any]:
    """The cores this process may actually use: its CPU affinity, bounded by its cgroup quota
    (rounded down, at least 1)."""
    allowed = affinity if affinity is not None else _affinity()
    quota = cgroup_cpu_limit(root, self_cgroup)
    cores = allowed if quota is None else max(1, min(allowed, math.floor(quota)))
    return {"cores": cores, "affinity": allowed, "cgroup_quota": quota}


def _torchrun_default(environ: MutableMapping[str, str]) -> bool:
    """torchrun puts OMP_NUM_THREADS=1 in every rank's environment when it starts several."""
    return environ.get("OMP_NUM_THREADS") == "1" and int(environ.get("LOCAL_WORLD_SIZE", "1")) > 1


def _wait_source(env: MutableMapping[str, str]) -> str:
    """Who put OMP_WAIT_POLICY in the environment: this policy in a parent process, or a user."""
    if env.get(POLICY_MARK) == env["OMP_WAIT_POLICY"]:
        return "policy (inherited from the parent process)"
    return "OMP_WAIT_POLICY (environment)"


def prepare_threads(environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Set the OpenMP wait policy for this process (and its children) before torch loads libgomp.

    Call it first thing in an entry point, before `import torch`. Leaves a user's
    OMP_WAIT_POLICY alone; after torch was imported it can change nothing and says so.
    """
    if environ is None and _state["prepared"] is not None:
        return _state["prepared"]  # called again (a notebook cell run twice): the first call decided
    env = os.environ if environ is None else environ
    user_threads = env.get("OMP_NUM_THREADS") if not _torchrun_default(env) else None
    if "OMP_WAIT_POLICY" in env:
        wait = {"wait_policy": env["OMP_WAIT_POLICY"], "wait_source": _wait_source(env)}
    elif "torch" in sys.modules:
        wait = {"wait_policy": "libgomp default (spin, then sleep)",
                "wait_source": "torch was imported before prepare_threads: too late to set"}  # fmt: skip
    else:
        env["OMP_WAIT_POLICY"] = env[POLICY_MARK] = WAIT_POLICY
        wait = {"wait_policy": WAIT_POLICY, "wait_source": "policy"}
    record = {**wait, "user_threads": user_threads}
    if environ is None:
        _state["prepared"] = record
    return record


def _torch_defaults(environ: MutableMapping[str, str]) -> set[int]:
    """The intra-op thread counts torch starts with when nobody chose: the CPU count, the
    affinity's and the physical cores' (torch counts those with cpuinfo), and under torchrun
    its OMP_NUM_THREADS=1."""
    cores = set()
    for cpu in CPU_TOPOLOGY.glob("cpu[0-9]*/topology"):
        cores.add((_read(cpu / "physical_package_id"), _read(cpu / "core_id")))
    started = 1 if _torchrun_default(environ) else None
    return {n for n in (os.cpu_count(), _affinity(), len(cores), started) if n}


def is_recurrent(model: nn.Module) -> bool:
    """Whether `model` holds a recurrent layer (LSTM, GRU, RNN)."""
    from torch import nn

    return any(isinstance(m, nn.RNNBase) for m in model.modules())


def choose_threads(cores: int, *, parameters: int, recurrent: bool, local_ranks: int = 1) -> tuple[int, str]:
    """Intra-op threads for one rank of `local_ranks` on `cores`, and why."""
    share = max(1, cores // max(1, local_ranks))
    where = f"{cores} usable cores" + (f" / {local_ranks} ranks on this machine" if local_ranks > 1 else "")
    if recurrent and parameters < SMALL_RECURRENT_PARAMETERS and share > 1:
        return 1, (
            f"a small recurrent model ({parameters:,} parameters < {SMALL_RECURRENT_PARAMETERS:,}): its "
            f"step is a chain of small parallel regions, which more threads did not speed up ({where})"
        )
    return share, where


def apply_threads(
    model: nn.Module,
    *,
    environ: MutableMapping[str, str] | None = None,
    affinity: int | None = None,
    root: Path = CGROUP_ROOT,
    self_cgroup: Path = SELF_CGROUP,
) -> dict[str, Any]:
    """Set torch's intra-op threads for training `model` in this process; the record of the
    choice (threads, wait policy, cores, and the reasons) for the run's summary."""
    import torch

    env = os.environ if environ is None else environ
    prepared = _state["prepared"] if environ is None else None
    if prepared is None:  # nobody called prepare_threads before torch: describe what is in force
        prepared = {
            "wait_policy": env.get("OMP_WAIT_POLICY", "libgomp default (spin, then sleep)"),
            "wait_source": _wait_source(env) if "OMP_WAIT_POLICY" in env else "not prepared",
            "user_threads": None if _torchrun_default(env) else env.get("OMP_NUM_THREADS"),
        }
    cores = usable_cores(affinity, root=root, self_cgroup=self_cgroup)
    local_ranks = int(env.get("LOCAL_WORLD_SIZE", "1"))
    parameters = sum(p.numel() for p in model.parameters())
    recurrent = is_recurrent(model)
    now = torch.get_num_threads()
    if prepared["user_threads"]:
        threads, source, reason = now, "OMP_NUM_THREADS", f"OMP_NUM_THREADS={prepared['user_threads']} is set"
    elif now != _state["set_by_us"] and now not in _torch_defaults(env):
        threads, source, reason = now, "torch.set_num_threads", "set by the caller before training"
    else:
        threads, reason = choose_threads(
            cores["cores"], parameters=parameters, recurrent=recurrent, local_ranks=local_ranks
        )
        source = "policy"
        torch.set_num_threads(threads)
        _state["set_by_us"] = threads
    return {
        "threads": threads,
        "threads_source": source,
        "reason": reason,
        "wait_policy": prepared["wait_policy"],
        "wait_source": prepared["wait_source"],
        **cores,
        "local_ranks": local_ranks,
        "parameters": parameters,
        "recurrent": recurrent,
    }
