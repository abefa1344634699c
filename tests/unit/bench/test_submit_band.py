"""``bench_submit`` says whether keyed requests ran in the weekly band (two writes)."""

from __future__ import annotations

from datetime import UTC, datetime

from bench.bench_submit import in_key_band


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


def test_the_band_is_thursdays_first_day_and_the_minute_before() -> None:
    assert in_key_band(at(2026, 12, 3, 0, 0, 1))  # a Thursday: a week's start
    assert in_key_band(at(2026, 12, 4, 0, 0, 59))  # still the first window (a day + 60 s)
    assert in_key_band(at(2026, 12, 2, 23, 59, 30))  # a minute before
    assert not in_key_band(at(2026, 12, 4, 0, 1, 1))
    assert not in_key_band(at(2026, 12, 2, 23, 58))
