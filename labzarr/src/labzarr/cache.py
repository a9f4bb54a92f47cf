"""Size-capped local caches of stored chunk bytes, so later epochs skip the network.

fsspec's `simplecache::` is ignored by zarr 3, so caching happens one level
up, in `remote.ResilientStore`, on the stored (compressed) bytes of each
chunk. Entries are keyed by the chunk's sha256 from the ETL manifest: a
rewritten store has new checksums, so a stale entry can never be served, and
a disk entry is re-verified against its name when read.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .errors import StudyError

CACHE_KINDS = ("none", "memory", "disk")


class MemoryCache:
    """Least-recently-used chunk bytes in this process, at most `max_bytes` in total.

    Values are kept as given (read-only views of the downloaded bytes): no copy.
    """

    blocking = False  # dictionary operations: cheap enough for the I/O loop

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Any:
        with self._lock:
            data = self._items.get(digest)
            if data is not None:
                self._items.move_to_end(digest)
            return data

    def put(self, digest: str, data: Any) -> None:
        size = memoryview(data).nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            if digest in self._items:
                return
            self._items[digest] = data
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= memoryview(evicted).nbytes

    def __len__(self) -> int:
        return len(self._items)


class DiskCache:
    """Chunk bytes as files named by their sha256 under `root`, at most `max_bytes` in total.

    Writes go to a temporary file renamed into place, so concurrent processes
    (DDP ranks, runs) can share one folder; the least recently used
    files are removed when the cap is exceeded.
    """

    blocking = True  # file I/O: called in a thread, off the I/O loop

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyError(f"cannot create the chunk cache folder {self.root}: {exc}") from None
        self._lock = threading.Lock()
        self.nbytes = sum(p.stat().st_size for p in self._files())

    def _files(self) -> list[Path]:
        return [p for p in self.root.glob("??/*") if p.is_file() and not p.name.startswith(".")]

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def get(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:  # damaged file: drop it, read from the server
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recency for the eviction order
        return data

    def put(self, digest: str, data: Any) -> None:
        size = memoryview(data).nbytes
        if size > self.max_bytes:
            return
        path = self._path(digest)
        if path.exists():
            return
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        with self._lock:
            self.nbytes += size
            if self.nbytes > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        files = sorted(self._files(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.max_bytes:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            total -= size
        self.nbytes = total


def make_cache(kind: str, *, max_mb: float, cache_dir: str | os.PathLike[str] | None = None):
    """The cache named by `train.cache` ("none", "memory" or "disk"), or None."""
    if kind == "none":
        return None
    max_bytes = int(max_mb * 1024 * 1024)
    if kind == "memory":
        return MemoryCache(max_bytes)
    if kind == "disk":
        if cache_dir is None:
            raise StudyError("a disk chunk cache needs a folder (train.cache_dir)")
        return DiskCache(cache_dir, max_bytes)
    raise StudyError(f"unknown chunk cache {kind!r}; allowed: {', '.join(CACHE_KINDS)}")
