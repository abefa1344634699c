"""The per-item CPU budget of a benchmark's processes."""

from __future__ import annotations

import os
import time

import pytest

from bench.cpu import CpuMeter, ceiling_per_s, cpu_seconds


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_cpu_spent_between_begin_and_now_is_counted_per_item() -> None:
    meter = CpuMeter({"me": os.getpid(), "gone": 2 ** 22 + 12345})
    meter.begin()
    _spin(0.2)
    per_item = meter.per_item_ms(10)
    assert "gone" not in per_item  # a process that cannot be read is left out
    assert 15 <= per_item["me"] <= 40  # 200 ms over 10 items, give or take the clock tick
    assert per_item["total"] == per_item["me"]


def test_an_unreadable_pid_reads_none() -> None:
    assert cpu_seconds(2 ** 22 + 12345) is None
    assert (cpu_seconds(os.getpid()) or 0) > 0


def test_the_ceiling_is_cores_over_the_cost() -> None:
    assert ceiling_per_s({"a": 1.5, "b": 2.5, "total": 4.0}, cores=2) == pytest.approx(500)
    assert ceiling_per_s({}) is None
