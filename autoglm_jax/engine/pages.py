"""The host-side page allocator with reference counts and prefix caching.

A page holds `page_size` tokens' K/V in every layer. Full pages are keyed by a hash chain:
hash(parent page's hash, this page's tokens, extra keys such as image/audio content hashes), so
a page is reused only when everything before it is the same too. Pages that no request holds
but that carry a hash stay cached; they are evicted least recently used when the free list runs
dry.
"""

from __future__ import annotations

import collections
import hashlib
import struct
from typing import Iterable, Sequence

NO_HASH = None


def hash_page(parent: bytes | None, tokens: Sequence[int], extra: bytes = b"") -> bytes:
    """The chained content hash of one full page."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    h.update(extra)
    return h.digest()


def page_hashes(tokens: Sequence[int], page_size: int, extra: bytes = b"") -> list[bytes]:
    """Hashes of every full page of `tokens` (the partial last page has none)."""
    out: list[bytes] = []
    parent = None
    for start in range(0, len(tokens) - page_size + 1, page_size):
        parent = hash_page(parent, tokens[start : start + page_size], extra)
        out.append(parent)
    return out


class PageAllocator:
    """Pages 0..num_pages-1. Page 0 is reserved as the padding target of block tables."""

    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True):
        if num_pages < 2:
            raise ValueError(f"need at least 2 pages, got {num_pages}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.refcount = [0] * num_pages
        self.page_hash: list[bytes | None] = [None] * num_pages
        self._free: collections.deque[int] = collections.deque(range(1, num_pages))
        # Pages with refcount 0 that still hold a cached prefix, oldest first.
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._by_hash: dict[bytes, int] = {}
        self.prefix_queries = 0  # tokens looked up in the prefix cache
        self.prefix_hits = 0  # tokens found there

    # Capacity.
    @property
    def num_free(self) -> int:
        """Pages an allocation can take now (free + evictable cached)."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        usable = self.num_pages - 1
        return 1.0 - self.num_free / usable

    # Allocation.
    def allocate(self, n: int) -> list[int] | None:
        """n fresh pages (refcount 1), or None when there are not enough."""
        if n > self.num_free:
            return None
        pages = []
        for _ in range(n):
            if self._free:
                page = self._free.popleft()
            else:
                page, _ = self._evictable.popitem(last=False)
                del self._by_hash[self.page_hash[page]]
                self.page_hash[page] = None
            self.refcount[page] = 1
            pages.append(page)
        return pages

    def free(self, pages: Iterable[int]) -> None:
        """Drop one reference to each page; unreferenced pages become free or evictable."""
        for page in pages:
            if self.refcount[page] <= 0:
                raise RuntimeError(f"page {page} freed more often than held")
            self.refcount[page] -= 1
            if self.refcount[page] == 0:
                if self.page_hash[page] is not None:
                    self._evictable[page] = None
                else:
                    self._free.append(page)

    # Prefix caching.
    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """Pages caching the longest prefix of `hashes`; each found page gains a reference."""
        found: list[int] = []
        if self.enable_prefix_caching:
            for h in hashes:
                page = self._by_hash.get(h)
                if page is None:
                    break
                found.append(page)
            for page in found:
                if self.refcount[page] == 0:
                    del self._evictable[page]
                self.refcount[page] += 1
        self.prefix_queries += len(hashes) * self.page_size
        self.prefix_hits += len(found) * self.page_size
        return found

    def register(self, page: int, page_hash: bytes) -> None:
        """Record that `page` (held by the caller) now holds the full page `page_hash`."""
        if not self.enable_prefix_caching or self.page_hash[page] is not None:
            return
        if page_hash in self._by_hash:  # another page already caches the same content
            return
        self.page_hash[page] = page_hash
        self._by_hash[page_hash] = page

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def check_invariants(self, held: Iterable[Sequence[int]]) -> None:
        """Debug check: refcounts equal the holders' counts; free/evictable/held partition."""
        counts = [0] * self.num_pages
        for pages in held:
            for p in pages:
                counts[p] += 1
        assert counts == self.refcount, "refcounts disagree with the pages requests hold"
        free, evict = set(self._free), set(self._evictable)
        assert len(free) == len(self._free), "a page is on the free list twice"
        assert not free & evict
        for p in range(1, self.num_pages):
            in_use = self.refcount[p] > 0
            assert in_use + (p in free) + (p in evict) == 1, f"page {p} is in two states"
        assert 0 not in free and 0 not in evict and self.refcount[0] == 0
        for h, p in self._by_hash.items():
            assert self.page_hash[p] == h
