"""Length-grouped batches: records of similar size share a batch, so a padded batch is cut to
its longest example instead of seq_len.

    batches = LengthGroupedBatches(source.sizes, batch_size=16, window=64, seed=0)
    batches[k]                        # i64[16]: the record indices of batch k (endless)
    length = batch_length(lengths, seq_len=336, multiple=64)

Each epoch is a fresh permutation of the records (seeded by seed and the epoch), cut into
windows of `window` batches; a window's records are sorted by size and cut into batches, and
the batches of a window are shuffled. So each batch holds records of similar size, while
which records meet, and in what order the batches come, still changes every epoch. A pure
function of the index: grain's iterator state (the next index) resumes it exactly. Records
left over at the end of an epoch (fewer than a batch) are skipped in that epoch.

Cost of grouping: a batch of short records weighs as much in the loss as a batch of long
ones (the loss is a mean over a batch's tokens), so short kinds of record count for more
than they do in randomly drawn batches.
"""

from __future__ import annotations

import sys
import threading

import grain
import numpy as np


class LengthGroupedBatches(grain.MapDataset):
    """An endless MapDataset whose element k is the record indices (i64[batch_size]) of batch
    k. `sizes`: a size per record (any order-preserving stand-in for its token count)."""

    def __init__(self, sizes: np.ndarray, *, batch_size: int, window: int, seed: int):
        super().__init__([])
        self._sizes = np.asarray(sizes, np.int64)
        if len(self._sizes) < batch_size:
            raise ValueError(f"{len(self._sizes)} records cannot fill one batch of {batch_size}")
        self._batch, self._window, self._seed = batch_size, window, seed
        self._per_epoch = len(self._sizes) // batch_size
        self._lock = threading.Lock()
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.slice(index)
        epoch, k = divmod(int(index), self._per_epoch)
        return self._plan(epoch)[k]

    def _plan(self, epoch: int) -> np.ndarray:
        """The batches of one epoch: i64[records // batch_size, batch_size]."""
        with self._lock:
            if self._cached is not None and self._cached[0] == epoch:
                return self._cached[1]
            rng = np.random.default_rng([self._seed, epoch])
            order = rng.permutation(len(self._sizes))[: self._per_epoch * self._batch]
            span = self._window * self._batch
            plans = []
            for start in range(0, len(order), span):
                records = order[start : start + span]
                records = records[np.argsort(self._sizes[records], kind="stable")]
                batches = records.reshape(-1, self._batch)
                plans.append(batches[rng.permutation(len(batches))])
            plan = np.concatenate(plans)
            self._cached = (epoch, plan)
            return plan

    def __str__(self) -> str:
        return f"LengthGroupedBatches(batch_size={self._batch}, window={self._window})"


def batch_length(lengths: list[int], *, seq_len: int, multiple: int) -> int:
    """The padded length of a batch whose examples have `lengths` tokens: the longest,
    rounded up to a multiple of `multiple`, at most seq_len."""
    longest = max(lengths)
    return min(seq_len, -(-longest // multiple) * multiple)
