"""Exponential backoff with jitter, for reconnecting to cameras and to Redis."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of ``initial * 2**n`` capped at ``maximum``, each drawn uniformly from [delay/2, delay].

    Jitter keeps a fleet of workers from reconnecting in lock-step after a shared outage.
    """

    initial: float = 0.5
    maximum: float = 30.0
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return self.rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempts = 0

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next delay unless ``stop`` is set first; True if it was set."""
        return stop.wait(self.next_delay())
