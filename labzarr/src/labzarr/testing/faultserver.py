"""A real HTTP server (aiohttp, 127.0.0.1, free port) serving a folder, with injected faults.

Tests use it to see the client's behaviour on real sockets: each request is
counted per path, and a fault rule (a glob on the path) can answer with a
status code, drop the connection in the middle of the body, stall, or trickle
(one byte every `trickle_s`: never silent long enough for a read timeout).
"""

from __future__ import annotations

import asyncio
import fnmatch
import threading
from collections import Counter
from pathlib import Path

from aiohttp import web

STALL_S = 60.0
SLOW_S = 0.5  # delay of a "slow" answer
TRICKLE_S = 0.25  # seconds between the bytes of a trickled answer (below any test's read timeout)
Action = int | str | tuple[int, dict[str, str]]


class FaultServer:
    """Serves `root` over HTTP in a background thread; use as a context manager.

    `fail(pattern, *actions)` queues actions for the next requests whose path
    matches `pattern` (one action per request, then normal service);
    `always(pattern, action)` applies an action to every matching request.
    Actions: an HTTP status (int), a status with headers (`(429, {"Retry-After": "1"})`),
    "drop" (half the body, then close), "stall" (half the body, then silence), "trickle"
    (the body one byte every `trickle_s` seconds), "slow" (the whole body after `SLOW_S`).
    `token` requires `Authorization: Bearer <token>`.
    """

    def __init__(self, root: Path, token: str | None = None, trickle_s: float = TRICKLE_S) -> None:
        self.root = Path(root)
        self.token = token
        self.trickle_s = trickle_s
        self.requests: Counter[str] = Counter()
        self._queued: list[tuple[str, list[Action]]] = []
        self._always: list[tuple[str, Action]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, pattern: str, *actions: Action) -> None:
        with self._lock:
            self._queued.append((pattern, list(actions)))

    def always(self, pattern: str, action: Action) -> None:
        with self._lock:
            self._always.append((pattern, action))

    def clear(self) -> None:
        with self._lock:
            self._queued.clear()
            self._always.clear()
            self.requests.clear()

    def count(self, pattern: str = "*") -> int:
        with self._lock:
            return sum(n for path, n in self.requests.items() if fnmatch.fnmatch(path, pattern))

    def _action(self, path: str) -> Action | None:
        with self._lock:
            self.requests[path] += 1
            for pattern, actions in self._queued:
                if actions and fnmatch.fnmatch(path, pattern):
                    return actions.pop(0)
            for pattern, action in self._always:
                if fnmatch.fnmatch(path, pattern):
                    return action
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            with self._lock:
                self.requests[path] += 1
            return web.Response(status=401, text="unauthorized")
        action = self._action(path)
        if isinstance(action, int):
            return web.Response(status=action, text=f"injected {action}")
        if isinstance(action, tuple):
            status, headers = action
            return web.Response(status=status, headers=headers, text=f"injected {status}")
        file = (self.root / path).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            return web.Response(status=404, text="not found")
        data = file.read_bytes()
        if action == "slow":
            await asyncio.sleep(SLOW_S)
        if action == "trickle":
            response = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await response.prepare(request)
            try:
                for i in range(len(data)):
                    await response.write(data[i : i + 1])
                    await asyncio.sleep(self.trickle_s)
            except ConnectionResetError:  # the client gave up: what the trickle is for
                pass
            return response
        if action in ("drop", "stall"):
            response = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if action == "stall":
                await asyncio.sleep(STALL_S)
            assert request.transport is not None
            request.transport.close()
            return response
        return web.Response(body=data, content_type="application/octet-stream")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def __enter__(self) -> FaultServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _stop(self) -> None:
        # A stalled or half-dropped connection can outlive the runner's cleanup: abort every
        # connection the server still has, cancel what still runs, then let the loop run the
        # transports' close callbacks, so no socket is left for the garbage collector to warn about.
        transports = []
        if self._runner is not None:
            if self._runner.server is not None:
                transports = [c.transport for c in self._runner.server.connections if c.transport]
            await self._runner.cleanup()
        for transport in transports:
            transport.abort()
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
