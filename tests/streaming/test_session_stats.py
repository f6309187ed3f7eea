"""streaming.session_stats: latency percentiles match numpy, nothing before data, memory bounded to the last values."""

from __future__ import annotations

import numpy as np
import pytest

from emote.streaming.session_stats import LatencyStats


def test_no_percentile_before_any_value() -> None:
    stats = LatencyStats()
    assert len(stats) == 0
    assert stats.percentile(50) is None and stats.percentile(95) is None


@pytest.mark.parametrize("q", [0, 5, 50, 95, 99, 100])
def test_percentiles_match_numpy(q: float) -> None:
    values = np.random.default_rng(3).gamma(2.0, 40.0, 1234)  # skewed, like real latencies
    stats = LatencyStats()
    for v in values:
        stats.add(v)
    got = stats.percentile(q)
    assert isinstance(got, float)
    assert got == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_known_values() -> None:
    stats = LatencyStats()
    for v in [40, 10, 30, 20]:  # order of arrival does not matter
        stats.add(v)
    assert stats.percentile(50) == 25.0  # the mean of the two middle values
    assert stats.percentile(0) == 10.0 and stats.percentile(100) == 40.0
    assert stats.percentile(95) == pytest.approx(38.5)  # linear interpolation: 30 + 0.85 * 10
    one = LatencyStats()
    one.add(7.5)
    assert one.percentile(50) == one.percentile(95) == 7.5


def test_capacity_keeps_only_the_most_recent_values() -> None:
    stats = LatencyStats(capacity=100)
    for v in range(1000):  # 0..999: only 900..999 are kept
        stats.add(v)
    assert len(stats) == 100
    assert stats.percentile(0) == 900.0 and stats.percentile(100) == 999.0
    assert stats.percentile(50) == pytest.approx(float(np.percentile(np.arange(900, 1000), 50)))


def test_default_capacity_is_bounded() -> None:
    stats = LatencyStats()
    for v in range(10_000):
        stats.add(float(v))
    assert len(stats) == 3000
    assert stats.percentile(0) == 7000.0


def test_values_are_stored_as_floats() -> None:
    stats = LatencyStats()
    stats.add(np.float32(1.5))
    stats.add(2)
    assert stats.percentile(100) == 2.0 and type(stats.percentile(100)) is float
