"""The CPU thread policy: cores from affinity and cgroup quotas, the choice per model, a user's own
settings respected, and the OpenMP wait policy taking effect in libgomp. About 4 s (one process
imports torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from labzarr.train import threads
from labzarr.train.threads import (
    SMALL_RECURRENT_PARAMETERS,
    apply_threads,
    cgroup_cpu_limit,
    choose_threads,
    prepare_threads,
    usable_cores,
)

SRC = Path(threads.__file__).resolve().parents[2]


def fake_cgroup(root: Path, membership: str, files: dict[str, str]) -> Path:
    """A cgroup mount at `root` holding `files` (relative path -> text) and a /proc/self/cgroup."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    self_cgroup = root.parent / "self_cgroup"
    self_cgroup.write_text(membership + "\n")
    return self_cgroup


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """Each test's torch thread count put back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    threads._state["set_by_us"] = None


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    self_cgroup = fake_cgroup(
        root, "0::/user.slice/job", {"cpu.max": "max 100000", "user.slice/cpu.max": "250000 100000",
                                     "user.slice/job/cpu.max": "150000 100000"},
    )  # fmt: skip
    assert cgroup_cpu_limit(root, self_cgroup) == 1.5
    assert usable_cores(8, root=root, self_cgroup=self_cgroup) == {
        "cores": 1,
        "affinity": 8,
        "cgroup_quota": 1.5,
    }
    (root / "user.slice/job/cpu.max").write_text("max 100000\n")
    assert usable_cores(8, root=root, self_cgroup=self_cgroup)["cores"] == 2  # the parent's 2.5 binds
    (root / "user.slice/cpu.max").write_text("max 100000\n")
    assert usable_cores(8, root=root, self_cgroup=self_cgroup) == {
        "cores": 8,
        "affinity": 8,
        "cgroup_quota": None,
    }
    (root / "user.slice/job/cpu.max").write_text("50000 100000\n")
    assert usable_cores(3, root=root, self_cgroup=self_cgroup)["cores"] == 1  # half a core: still one thread


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    self_cgroup = fake_cgroup(
        root, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/",
        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
         "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
         "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )  # fmt: skip
    assert cgroup_cpu_limit(root, self_cgroup) == 3.0
    assert usable_cores(16, root=root, self_cgroup=self_cgroup)["cores"] == 3
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(root, self_cgroup) is None
    assert cgroup_cpu_limit(root, tmp_path / "no such file") is None


def test_no_affinity_call_or_an_unreadable_quota_means_every_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cgroup"
    self_cgroup = fake_cgroup(root, "garbage\n0::/", {"cpu.max": "unknown format"})
    assert cgroup_cpu_limit(root, self_cgroup) is None
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert usable_cores(root=root, self_cgroup=self_cgroup)["cores"] == os.cpu_count()


def test_choice_per_model_and_ranks() -> None:
    small, large = SMALL_RECURRENT_PARAMETERS // 10, SMALL_RECURRENT_PARAMETERS * 2
    assert choose_threads(2, parameters=small, recurrent=True)[0] == 1
    assert "small recurrent" in choose_threads(8, parameters=small, recurrent=True)[1]
    assert choose_threads(8, parameters=large, recurrent=True)[0] == 8
    assert choose_threads(8, parameters=small, recurrent=False)[0] == 8
    assert choose_threads(8, parameters=small, recurrent=False, local_ranks=2) == (
        4, "8 usable cores / 2 ranks on this machine",
    )  # fmt: skip
    assert choose_threads(2, parameters=large, recurrent=False, local_ranks=4)[0] == 1


def test_apply_sets_torch_threads_and_respects_the_users_choice(torch_threads: None) -> None:
    lstm, conv = nn.LSTM(2, 64, batch_first=True), nn.Conv1d(2, 8, 3)
    record = apply_threads(lstm, environ={}, affinity=4)
    assert (record["threads"], record["threads_source"], record["recurrent"]) == (1, "policy", True)
    assert torch.get_num_threads() == 1 and record["parameters"] == sum(p.numel() for p in lstm.parameters())
    assert apply_threads(conv, environ={}, affinity=4)["threads"] == 4 == torch.get_num_threads()
    # torchrun's own OMP_NUM_THREADS=1 for several ranks is not a choice: each rank gets its share
    torch.set_num_threads(1)  # what torch starts with in a rank
    threads._state["set_by_us"] = None
    record = apply_threads(conv, environ={"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}, affinity=4)
    assert (record["threads"], record["threads_source"], record["local_ranks"]) == (2, "policy", 2)

    record = apply_threads(conv, environ={"OMP_NUM_THREADS": "3"}, affinity=4)
    assert (record["threads_source"], torch.get_num_threads()) == ("OMP_NUM_THREADS", 2)  # left as it was
    chosen = max(threads._torch_defaults({})) + 3  # no default of torch's
    torch.set_num_threads(chosen)
    record = apply_threads(lstm, environ={}, affinity=4)
    assert (record["threads"], record["threads_source"], torch.get_num_threads()) == (
        chosen, "torch.set_num_threads", chosen,
    )  # fmt: skip


def test_prepare_leaves_a_user_policy_and_says_when_it_is_too_late() -> None:
    env = {"OMP_WAIT_POLICY": "active", "OMP_NUM_THREADS": "2"}
    assert prepare_threads(env) == {
        "wait_policy": "active", "wait_source": "OMP_WAIT_POLICY (environment)", "user_threads": "2",
    }  # fmt: skip
    assert env["OMP_WAIT_POLICY"] == "active"
    inherited = {"OMP_WAIT_POLICY": "passive", threads.POLICY_MARK: "passive"}  # a parent's prepare_threads
    assert prepare_threads(inherited)["wait_source"] == "policy (inherited from the parent process)"
    env = {}
    assert "too late" in prepare_threads(env)["wait_source"]  # this test process imported torch
    assert env == {}


def test_prepare_before_torch_makes_libgomp_threads_sleep(tmp_path: Path) -> None:
    """libgomp reads its environment when torch loads it: OMP_DISPLAY_ENV shows the spin count it
    took (300000 turns of spinning by default, 0 with the passive policy)."""
    code = (
        "from labzarr.train.threads import prepare_threads; print(prepare_threads()['wait_source']); "
        "import torch; torch.ones(2).sum()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "policy"
    assert "GOMP_SPINCOUNT = '0'" in done.stderr, done.stderr
