"""Data-parallel training under `torchrun`: the process group, each rank's device, ranks kept in step.

`torchrun --standalone --nproc_per_node=N -m <package> train ...` starts N copies of the
same command; torchrun's variables (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, ...)
tell each copy who it is. `start()` reads them; without them (a plain `<package> train`,
the notebook) it returns a single-process `Ranks` whose collectives are identities, so the
training loop has one code path and the single-process results do not change.

Why these choices:

* **device**: rank r on a node trains on `cuda:LOCAL_RANK` with NCCL when CUDA is there,
  else on the CPU with gloo (the tests run 2 CPU ranks with gloo). Threads: each rank's intra-op
  threads come from `threads.apply_threads`: its share of the usable cores (cores //
  LOCAL_WORLD_SIZE, at least 1; one for a small recurrent model), waiting threads sleeping
  (`threads.prepare_threads`, which the study's CLI calls before importing torch). torchrun's
  own `OMP_NUM_THREADS=1` for several ranks is not taken as a user's choice; another value is;
* **uneven shares**: the loader gives rank r every N-th window of the epoch's permutation, so
  batch counts may differ by one (and by more for a streamed series). `Join` keeps DDP's
  gradient all-reduces matched (a rank that ran out contributes zero gradients, averaged over
  all N). Join does not step the optimizer of a rank that ran out, so after such an epoch
  `realign` copies the weights, optimizer and gradient-scaler state of a rank that ran the
  most steps to the others: every rank starts the next epoch identical. After every epoch
  rank 0 compares digests of each rank's weights and optimizer state (`state_digest`) and
  stops the run if they differ;
* **data**: each rank fetches the whole series itself onto its own device (the store is
  bounded by `train.resident_max_mb` per rank, 4096 MB by default); ranks on one machine may
  share the disk chunk cache folder, whose files are written under temporary names and
  renamed (`atomic.atomic_write`) and verified when read;
* **evaluation**: each rank evaluates its own share of a split with the plain module (no DDP,
  so no collectives in the pass); the loss sums are all-reduced and the true and predicted
  codes (2 bytes per window) gathered on rank 0, so the metrics are those of one process
  evaluating the whole split;
* **decisions on rank 0**: rank 0 computes the metrics, decides improvement and early
  stopping, writes checkpoints and results, and broadcasts its loop state: no rank can stop
  alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from ..errors import StudyError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(StudyError):
    """The processes cannot form a training group (not started by torchrun, too few GPUs, ...)."""


def select_device(preferred: str | None = None) -> torch.device:
    """`preferred` if given, else CUDA when available, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rank_device(preferred: str | None, local_rank: int) -> torch.device:
    """The device of the rank with `local_rank` on its node: `cuda:LOCAL_RANK` or the CPU."""
    kind = select_device(preferred).type
    if preferred and torch.device(preferred).index is not None:
        raise DistributedError(
            f"under torchrun each rank trains on cuda:LOCAL_RANK; pass the device 'cuda' or 'cpu', "
            f"not {preferred!r}"
        )
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise DistributedError(f"distributed training runs on 'cuda' (NCCL) or 'cpu' (gloo), not {kind!r}")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise DistributedError("the device 'cuda' was asked for, but this machine has no usable GPU")
    if local_rank >= available:
        raise DistributedError(
            f"torchrun started more processes on this node than it has GPUs (local rank {local_rank}, "
            f"{available} GPUs): use --nproc_per_node={available} or fewer"
        )
    return torch.device("cuda", local_rank)


def state_digest(model_state: Mapping[str, torch.Tensor], optimizer_state: Mapping[str, Any]) -> str:
    """sha256 of a model's and its optimizer's state dicts: equal digests, ranks in step.

    The optimizer's state is included because DDP re-syncs the weights at the end of every Join,
    which hides ranks whose Adam moments drifted apart (they step differently within an epoch).
    """
    digest = hashlib.sha256()

    def add(name: str, value: Any) -> None:
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(repr(value).encode())

    for name, tensor in model_state.items():
        add(name, tensor)
    for index, values in sorted(optimizer_state["state"].items()):
        for name, value in sorted(values.items()):
            add(f"optimizer.{index}.{name}", value)
    return digest.hexdigest()


def _on_cpu(value: Any) -> Any:
    """Tensors of a (nested) optimizer state moved to the CPU, for pickling between ranks."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_on_cpu(v) for v in value]
    return value


@dataclass(frozen=True)
class Ranks:
    """This process's place in the training group; one rank (rank 0 of 1) without torchrun."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    owns_group: bool = field(default=False, compare=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, decides and writes."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What the summary records about the group."""
        if not self.distributed:
            return {"world_size": 1}
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "threads_per_rank": torch.get_num_threads(),
        }

    def rank_seed(self, seed: int) -> int:
        """A torch seed of this rank (dropout masks differ between ranks, as within one big batch)."""
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    # -- the model -------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel (gradients averaged over ranks), or as it is."""
        if not self.distributed:
            return model
        return DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def realign(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, steps: int
    ) -> bool:
        """After an epoch in which ranks ran different numbers of `steps`, copy the weights, the
        optimizer and the gradient scaler of a rank that ran the most to every rank.

        Under Join a rank that ran out skips the optimizer steps of the others (Adam's moments and
        step count, the scaler's scale fall behind): without this, the ranks' weights would drift
        apart from the next epoch on. Returns whether the epoch was uneven.
        """
        if not self.distributed:
            return False
        bounds = torch.tensor([steps, -steps], dtype=torch.int64, device=self.device)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        most, fewest = int(bounds[0]), -int(bounds[1])
        if most == fewest:
            return False
        candidate = torch.tensor(self.rank if steps == most else -1, dtype=torch.int64, device=self.device)
        dist.all_reduce(candidate, op=dist.ReduceOp.MAX)  # the largest such rank, like DDP's own choice
        source = int(candidate)
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=source)
        payload = [{"optimizer": _on_cpu(optimizer.state_dict()), "scaler": scaler.state_dict()}]
        if self.rank != source:
            payload = [None]
        dist.broadcast_object_list(payload, src=source, device=self.device)
        if self.rank != source:
            optimizer.load_state_dict(payload[0]["optimizer"])
            scaler.load_state_dict(payload[0]["scaler"])
        return True

    # -- collectives (identities in a single process) --------------------------------------
    def sum(self, values: list[torch.Tensor | float]) -> list[float]:
        """Element-wise sums over ranks, as Python floats (float64 on the way)."""
        total = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        if self.distributed:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.tolist()

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` (picklable), in rank order, on rank 0; None on the other ranks."""
        if not self.distributed:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (picklable) on every rank."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def stop(self) -> None:
        """Leave the process group (when `start` created it)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def uneven_inputs(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Join for a DDP model (ranks may run different numbers of batches), else nothing."""
    if isinstance(model, DistributedDataParallel):
        return Join([model])
    return contextlib.nullcontext()


def start(preferred: str | None = None) -> Ranks:
    """Join the training group torchrun describes in the environment, or run as one process.

    `preferred` ('cuda' or 'cpu', default: CUDA when available) chooses the kind of device;
    under torchrun each rank takes `cuda:LOCAL_RANK` (NCCL) or the CPU (gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks(device=select_device(preferred))
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} are not set: start distributed training "
            "with torchrun (torchrun --standalone --nproc_per_node=N -m <package> train ...)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = rank_device(preferred, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise DistributedError("a process group is already running with another rank or size than torchrun's")
    else:  # the caller's own group (e.g. a notebook that set one up): used as it is, left running
        backend = str(dist.get_backend())
    return Ranks(device=device, rank=rank, world_size=world_size, backend=backend, owns_group=owns)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on request, ask torch for deterministic kernels
    (warn-only: used on CPU, where it costs nothing; CUDA kernels are left fast)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
