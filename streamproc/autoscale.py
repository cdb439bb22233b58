"""Autoscaling detectors on one machine: the decision, apart from the processes it applies to.

Scale up when frames wait (the oldest unfinished frame is older than ``up_age_s``, or the backlog exceeds
``up_backlog_per_worker`` per worker); scale down when the workers' combined busy time would fit in one
worker fewer at ``down_busy`` utilisation, continuously for ``down_after_s``. Every change is followed
by ``cooldown_s`` without another (a new worker needs seconds to load its model): the hysteresis that
keeps the pool from flapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamproc.config import AutoscaleConfig
from streamproc.observe import Demand


@dataclass
class Autoscaler:
    cfg: AutoscaleConfig
    last_change: float = -math.inf
    calm_since: float | None = None

    def target(self, demand: Demand, busy: list[float], now: float) -> int:
        """How many detectors to run, given the demand and each current worker's busy fraction."""
        current = len(busy)
        if current < self.cfg.min_workers:
            return self._change(self.cfg.min_workers, now)
        cooled = now - self.last_change >= self.cfg.cooldown_s
        pressure = demand.oldest_age_s > self.cfg.up_age_s or demand.backlog > self.cfg.up_backlog_per_worker * current
        if pressure:
            self.calm_since = None
            return self._change(current + 1, now) if current < self.cfg.max_workers and cooled else current
        if current > self.cfg.min_workers and sum(busy) < self.cfg.down_busy * (current - 1):
            self.calm_since = now if self.calm_since is None else self.calm_since
            if now - self.calm_since >= self.cfg.down_after_s and cooled:
                return self._change(current - 1, now)
            return current
        self.calm_since = None
        return current

    def _change(self, target: int, now: float) -> int:
        self.last_change = now
        self.calm_since = None
        return target


def parse_range(text: str) -> tuple[int, int]:
    """``MIN:MAX`` from ``--autoscale``."""
    low, sep, high = text.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high):
        raise ValueError(f"--autoscale {text!r}: expected MIN:MAX with 1 <= MIN <= MAX, e.g. 1:4")
    return int(low), int(high)
