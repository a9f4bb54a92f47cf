"""The usable windows of a split, held compactly, and the seeded permutations that order them.

A split of 46,000 cells x 30 years has about 350 million windows: as int64 `(cell, end)`
indices, plus a materialised permutation per epoch, they took several times the memory of
the series itself. Here a split's windows cost about 8 bytes per cell (a cumulative count,
so a flat window number maps to its cell by `searchsorted`) plus 2 bytes per window only in
the cells where some end dates are unusable (a gap in the data or a missing label); each
epoch's order is a keyed Feistel permutation of [0, N) evaluated on the positions a batch
needs, never an array of N.
"""

from __future__ import annotations

import numpy as np

from ..store_format import MISSING

WORK_BYTES = 8 * 2**20  # scratch of the per-block computations (about 4x this at the peak: sums, masks)
# Luby-Rackoff: 4 rounds of a pseudo-random function give a strong pseudo-random permutation
FEISTEL_ROUNDS = 4


class WindowIndex:
    """The usable windows of one split: window `i` (0 <= i < len) in cell-major, then time order.

    `counts_before[c]` windows come before cell `c`; a cell whose every candidate end is usable
    ("full") needs nothing more; the others keep, per window, the position of its end among
    `ends` (`offsets[first[c] + k]` for the k-th window of cell c).
    """

    def __init__(self, labels: np.ndarray, complete: np.ndarray, ends: np.ndarray, lookback: int) -> None:
        n_cells, n_time = labels.shape
        self.n_time = n_time
        self.ends = np.asarray(ends, dtype=np.int64)
        n_ends = len(self.ends)
        offset_dtype = np.uint16 if n_ends <= np.iinfo(np.uint16).max else np.uint32
        counts = np.zeros(n_cells, dtype=np.int64)
        self.first = np.full(n_cells, -1, dtype=np.int64)  # -1: a full cell (no offsets kept)
        partial: list[np.ndarray] = []
        kept = 0
        block = max(1, WORK_BYTES // (4 * (n_time + 1)))
        for c0 in range(0, n_cells, block):
            usable = self._usable(labels[c0 : c0 + block], complete[c0 : c0 + block], lookback)
            counts[c0 : c0 + len(usable)] = usable.sum(axis=1)
            for row in np.flatnonzero(counts[c0 : c0 + len(usable)] < n_ends):
                positions = np.flatnonzero(usable[row]).astype(offset_dtype)
                self.first[c0 + row] = kept
                kept += len(positions)
                partial.append(positions)
        self.counts_before = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(counts, out=self.counts_before[1:])
        self.offsets = np.concatenate(partial) if partial else np.empty(0, dtype=offset_dtype)
        # A coarse table (about 16 buckets per cell) of the cell at each bucket's first window:
        # most lookups are one read of it, the few that straddle a cell boundary a binary search.
        n = len(self)
        self._shift = max(0, (n // max(1, 16 * n_cells)).bit_length() - 1)
        starts = np.arange(0, max(n, 1), 1 << self._shift, dtype=np.int64)
        self._bucket_cell = (np.searchsorted(self.counts_before, starts, side="right") - 1).astype(np.int32)

    def _usable(self, labels: np.ndarray, complete: np.ndarray, lookback: int) -> np.ndarray:
        """(cells, ends) True where the window ending there has a label and complete days only."""
        if not len(self.ends):
            return np.zeros((len(labels), 0), dtype=bool)
        gaps = np.zeros((len(labels), self.n_time + 1), dtype=np.int32)
        np.cumsum(~complete, axis=1, out=gaps[:, 1:])
        bad = gaps[:, self.ends + 1] - gaps[:, self.ends + 1 - lookback]
        return (labels[:, self.ends] != MISSING) & (bad == 0)

    def __len__(self) -> int:
        return int(self.counts_before[-1])

    @property
    def nbytes(self) -> int:
        parts = (self.counts_before, self.first, self.offsets, self.ends, self._bucket_cell)
        return sum(part.nbytes for part in parts)

    def cells(self, windows: np.ndarray) -> np.ndarray:
        """The cell of each window number."""
        cell = self._bucket_cell[windows >> self._shift].astype(np.int64)
        beyond = np.flatnonzero(self.counts_before[cell + 1] <= windows)
        if len(beyond):
            cell[beyond] = np.searchsorted(self.counts_before, windows[beyond], side="right") - 1
        return cell

    def flat(self, windows: np.ndarray) -> np.ndarray:
        """Flat indices `cell * n_time + end` (int64) of window numbers `windows`."""
        windows = np.asarray(windows, dtype=np.int64)
        cell = self.cells(windows)
        k = windows - self.counts_before[cell]
        if len(self.offsets):  # some cells have gaps: their windows' ends are looked up
            first = self.first[cell]
            partial = first >= 0
            k[partial] = self.offsets[first[partial] + k[partial]]
        cell *= self.n_time
        cell += self.ends[k]
        return cell

    def cell_windows(self, first_cell: int, stop_cell: int) -> range:
        """Window numbers of cells [first_cell, stop_cell): a contiguous range."""
        return range(int(self.counts_before[first_cell]), int(self.counts_before[stop_cell]))

    def all_flat(self, block: int = 2**20) -> np.ndarray:
        """Every window's flat index (int64, N of them: for small splits and checks)."""
        return np.concatenate(
            [self.flat(np.arange(i, min(i + block, len(self)))) for i in range(0, len(self), block)]
            or [np.empty(0, dtype=np.int64)]
        )


class Permutation:
    """A seeded pseudo-random permutation of [0, n), evaluated where asked (no array of n).

    A balanced Feistel network over the smallest even number of bits covering n, with round
    keys drawn from `key` and a splitmix64 round function; values that land outside [0, n)
    are encrypted again (cycle walking), so the map stays a bijection of [0, n). Each image
    costs a few dozen vectorised integer operations.
    """

    def __init__(self, n: int, key: list[int] | tuple[int, ...]) -> None:
        self.n = int(n)
        bits = max(2, (max(self.n, 1) - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        self.keys = np.random.default_rng(list(key)).integers(0, 2**63, size=FEISTEL_ROUNDS, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:  # round: left, right = right, left ^ F(right), F a keyed splitmix64
            f = right ^ key
            f ^= f >> np.uint64(30)
            f *= np.uint64(0xBF58476D1CE4E5B9)
            f ^= f >> np.uint64(27)
            f *= np.uint64(0x94D049BB133111EB)
            f ^= f >> np.uint64(31)
            f &= self.mask
            f ^= left
            left, right = right, f
        left <<= self.half
        left |= right
        return left

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The images (int64) of `positions` (each in [0, n))."""
        out = self._encrypt(np.asarray(positions).astype(np.uint64))  # a copy: encrypted in place
        outside = np.flatnonzero(out >= self.n)
        while len(outside):
            out[outside] = self._encrypt(out[outside])
            outside = outside[out[outside] >= self.n]
        return out.view(np.int64)  # every value is below n < 2**63
