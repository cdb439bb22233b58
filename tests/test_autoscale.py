"""The autoscaling decision, step by step (the processes are exercised in test_scaling.py)."""

import pytest

from streamproc.autoscale import Autoscaler, parse_range
from streamproc.config import AutoscaleConfig
from streamproc.observe import Demand

CFG = AutoscaleConfig(min_workers=1, max_workers=3, up_age_s=1.0, down_after_s=10.0, cooldown_s=5.0)
CALM = Demand(backlog=0, oldest_age_s=0.0)
WAITING = Demand(backlog=5, oldest_age_s=2.5)


def test_scales_up_under_pressure_with_cooldown() -> None:
    scaler = Autoscaler(CFG)
    assert scaler.target(WAITING, [1.0], now=100.0) == 2
    assert scaler.target(WAITING, [1.0, 1.0], now=103.0) == 2  # cooling down: the new worker is loading
    assert scaler.target(WAITING, [1.0, 1.0], now=105.5) == 3
    assert scaler.target(WAITING, [1.0, 1.0, 1.0], now=200.0) == 3  # at max


def test_scales_down_only_after_a_calm_period_that_fits() -> None:
    scaler = Autoscaler(CFG)
    assert scaler.target(CALM, [0.5, 0.5], now=0.0) == 2  # 1.0 busy would not fit in one worker at 0.6
    assert scaler.target(CALM, [0.2, 0.2], now=1.0) == 2  # fits: calm period starts
    assert scaler.target(CALM, [0.2, 0.2], now=8.0) == 2
    assert scaler.target(WAITING, [0.2, 0.2], now=9.0) == 3  # pressure resets the calm period
    assert scaler.target(CALM, [0.1, 0.1, 0.1], now=15.0) == 3
    assert scaler.target(CALM, [0.1, 0.1, 0.1], now=25.5) == 2
    assert scaler.target(CALM, [0.1, 0.1], now=26.0) == 2  # cooldown, and a new calm period


def test_keeps_the_minimum_and_parses_ranges() -> None:
    scaler = Autoscaler(CFG)
    assert scaler.target(CALM, [], now=0.0) == 1
    assert scaler.target(CALM, [0.0], now=100.0) == 1
    assert parse_range("1:4") == (1, 4)
    with pytest.raises(ValueError, match="MIN:MAX"):
        parse_range("4:1")
