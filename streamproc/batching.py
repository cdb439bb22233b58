"""Dynamic batching across cameras, fair to every camera.

Frames wait in one queue per camera. A batch is ready when it is full or when its oldest frame has
waited ``max_wait_s``; it is filled round-robin over the cameras, oldest first within each, starting
after the camera served first last time. A camera flooding the stream therefore gets its fair share of
each batch and never starves the others.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairBatcher(Generic[T]):
    def __init__(self, max_batch: int, max_wait_s: float, key: Callable[[T], str]) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.key = key
        self._queues: OrderedDict[str, deque[tuple[float, T]]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, item: T, now: float | None = None) -> None:
        queue = self._queues.setdefault(self.key(item), deque())
        queue.append((time.monotonic() if now is None else now, item))
        self._size += 1

    def __iter__(self) -> Iterator[T]:
        for queue in self._queues.values():
            for _, item in queue:
                yield item

    def oldest(self) -> float | None:
        """Arrival time of the longest-waiting item."""
        heads = [q[0][0] for q in self._queues.values() if q]
        return min(heads) if heads else None

    def wait_time(self, now: float | None = None) -> float:
        """Seconds until a batch is due (0 when it is due now, max_wait when empty)."""
        oldest = self.oldest()
        if self._size >= self.max_batch:
            return 0.0
        if oldest is None:
            return self.max_wait_s
        now = time.monotonic() if now is None else now
        return max(0.0, oldest + self.max_wait_s - now)

    def ready(self, now: float | None = None) -> bool:
        return self._size > 0 and self.wait_time(now) == 0.0

    def take(self) -> list[T]:
        """Up to ``max_batch`` items, round-robin over cameras."""
        batch: list[T] = []
        while len(batch) < self.max_batch and self._size:
            camera, queue = next(iter(self._queues.items()))
            self._queues.move_to_end(camera)
            batch.append(queue.popleft()[1])
            self._size -= 1
            if not queue:
                del self._queues[camera]
        return batch
