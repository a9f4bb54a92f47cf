"""Run a baked study's own `serve` command (real nginx) for the duration of a test.

`<package> serve` prints exactly one line on stdout once nginx answers `/healthz`:

    Serving <data_dir> at http://127.0.0.1:<port>/

`study_server` waits for that line and yields the base URL WITHOUT the trailing
slash (the same form as `server.url` in study.toml), so stores are at
`f"{url}/{cfg.store_name}"`. On exit it always stops the server
(SIGTERM, then SIGKILL of its process group if it hangs) and asserts that the
serve process exited cleanly and left no nginx process (master or worker) behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from labzarr.testing.fixtures import readable_by_nginx_workers

URL_LINE = re.compile(r"^Serving (?P<data>.+) at (?P<url>https?://\S+?)/?$")
# Credentials a developer may have exported; a test decides them explicitly.
AUTH_VARS = ("DATA_TOKEN", "DATA_USER", "DATA_PASSWORD", "DATA_TOKEN_FILE", "DATA_HTPASSWD_FILE")


def study_package(study: Path) -> str:
    """The import name of a baked study's package (the only folder in src/)."""
    (package,) = [p.name for p in (study / "src").iterdir() if (p / "__init__.py").is_file()]
    return package


def _pump(stream, sink: list[str], ready: threading.Event | None = None) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        if ready is not None and URL_LINE.match(sink[-1]):
            ready.set()
    if ready is not None:
        ready.set()  # EOF: the process ended before (or after) printing its URL


def _nginx_tree(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if _is_nginx(p)]


def _is_nginx(proc: psutil.Process) -> bool:
    try:
        return "nginx" in proc.name() or any("nginx" in part for part in proc.cmdline()[:1])
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def study_server(
    python: Path,
    study: Path,
    data_dir: Path,
    *,
    auth_env: dict[str, str],
    limit_rate: str | None = None,
    port: int | None = 0,
    stderr: list[str] | None = None,
    timeout: float = 30.0,
) -> Iterator[str]:
    """Serve `data_dir` with the study's `serve` command; yield its base URL (no trailing slash).

    `auth_env` holds the credential variables of the baked auth mode, e.g.
    {"DATA_TOKEN": "..."} or {"DATA_USER": "u", "DATA_PASSWORD": "p"} ({} for auth none);
    any such variable inherited from the caller's environment is removed first.
    `port` 0 takes a free port; None passes no --port (serve then uses server.port).
    `stderr`, when given, receives serve's (and nginx's) error output line by line.
    """
    readable_by_nginx_workers(data_dir)  # as root, serve runs nginx's workers unprivileged
    cmd = [str(python), "-m", study_package(study), "serve", "--data", str(data_dir)]
    if port is not None:
        cmd += ["--port", str(port)]
    if limit_rate is not None:
        cmd += ["--limit-rate", limit_rate]
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/sbin", env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(auth_env)
    proc = subprocess.Popen(
        cmd, cwd=study, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # our own process group: a hung server can be killed as a whole
    )  # fmt: skip
    out: list[str] = []
    err: list[str] = stderr if stderr is not None else []
    ready = threading.Event()
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, ready), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True),
    ]
    for t in pumps:
        t.start()

    def logs() -> str:
        return f"--- stdout ---\n{chr(10).join(out)}\n--- stderr ---\n{chr(10).join(err[-60:])}"

    nginx: list[psutil.Process] = []
    try:
        ready.wait(timeout)
        match = next((m for line in out if (m := URL_LINE.match(line))), None)
        if match is None:
            state = f"exited with {proc.poll()}" if proc.poll() is not None else f"was silent for {timeout}s"
            raise AssertionError(f"{' '.join(cmd)} {state} without printing its URL\n{logs()}")
        nginx = _nginx_tree(proc.pid)
        assert nginx, f"serve printed its URL but runs no nginx process\n{logs()}"
        yield match["url"]
    except BaseException:
        _stop(proc, nginx, pumps)  # the test's own failure is the one to report
        raise
    problems = _stop(proc, nginx, pumps)
    assert not problems, f"{'; '.join(problems)}\n{logs()}"


def _stop(proc: subprocess.Popen[str], nginx: list[psutil.Process], pumps: list[threading.Thread]) -> list[str]:
    """SIGTERM, wait, escalate; returns what went wrong (hang, bad status, nginx left)."""
    problems = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
            if proc.returncode != 0:
                problems.append(f"serve exited with {proc.returncode} after SIGTERM")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            problems.append("serve did not stop within 15 s of SIGTERM")
    else:
        problems.append(f"serve had already exited with {proc.returncode}")
    for t in pumps:
        t.join(timeout=5)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in nginx) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in nginx if _alive(p)]
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()  # psutil checks it is still the same process (pid and start time)
    if left:
        problems.append(f"nginx processes {[p.pid for p in left]} outlived serve")
    return problems
