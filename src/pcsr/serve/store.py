"""Bounded in-memory stores for the server: uploaded pictures, prepared previews, results.

Everything a visitor sends or gets stays in process memory (nothing is written under a name a
client chooses), and every store is bounded in bytes, least recently used first out, so a stream
of uploads costs memory only up to the budget. The most recent entry is kept even when it alone
exceeds the budget: a result must stay fetchable right after it was made.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class Store(Generic[V]):
    """A thread-safe LRU map bounded by the sum of `size(value)`. Worker threads put, the event
    loop gets: one lock guards the order and the total."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]):
        self.max_bytes, self._size = int(max_bytes), size
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: V) -> V:
        n = max(0, int(self._size(value)))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._items[key] = (value, n)
            self._total += n
            while self._total > self.max_bytes and len(self._items) > 1:
                _, (_, size) = self._items.popitem(last=False)
                self._total -= size
        return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._total
