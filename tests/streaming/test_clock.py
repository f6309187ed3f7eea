"""streaming.clock: the virtual clock wakes sleepers in deadline order at exactly their deadlines; the real one sleeps.

Every test records ``clock.now()`` at the moment a sleeper resumes, so a clock that wakes sleepers late (say, at
the end of ``advance``), early, or out of order shows up as a wrong time or a wrong order, not just a wrong count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from emote.streaming.clock import Clock, MonotonicClock, VirtualClock


async def _sleeper(clock: VirtualClock, deadline: float, name: str, woke: list[tuple[str, float]]) -> None:
    await clock.sleep_until(deadline)
    woke.append((name, clock.now()))


async def advance(clock: VirtualClock, seconds: float, **kwargs: float) -> None:
    """``clock.advance``, failing instead of hanging when a broken clock never gets there."""
    await asyncio.wait_for(clock.advance(seconds, **kwargs), timeout=5.0)


async def _started(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task that has run up to its first await (so it is already asleep on the clock)."""
    task = asyncio.get_running_loop().create_task(coro)
    for _ in range(5):
        await asyncio.sleep(0)
    return task


@pytest.mark.asyncio
async def test_sleepers_wake_in_deadline_order_at_their_deadlines() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []
    # Registered out of order, with a tie (0.2 twice: first come, first woken) and one beyond the advance.
    plan = [("c", 0.3), ("a", 0.1), ("b1", 0.2), ("b2", 0.2), ("late", 1.5)]
    tasks = [await _started(_sleeper(clock, t, name, woke)) for name, t in plan]
    assert woke == []  # nobody wakes before time moves

    await advance(clock, 1.0)
    assert woke == [("a", 0.1), ("b1", 0.2), ("b2", 0.2), ("c", 0.3)]
    assert clock.now() == 1.0
    assert not tasks[-1].done() and clock.next_deadline == 1.5

    await advance(clock, 0.5)  # a deadline exactly at the target wakes (<=), at the target time
    assert woke[-1] == ("late", 1.5)
    assert all(task.done() for task in tasks)
    assert clock.next_deadline is None


@pytest.mark.asyncio
async def test_advance_in_steps_wakes_only_what_is_due() -> None:
    clock = VirtualClock(start=10.0)
    woke: list[tuple[str, float]] = []
    for name, t in [("x", 10.05), ("y", 10.25)]:
        await _started(_sleeper(clock, t, name, woke))
    await advance(clock, 0.04)
    assert woke == [] and clock.now() == pytest.approx(10.04)
    await advance(clock, 0.02)
    assert woke == [("x", 10.05)]
    await advance(clock, 0.0)  # zero is allowed and moves nothing
    assert woke == [("x", 10.05)] and clock.now() == pytest.approx(10.06)
    await advance(clock, 0.5)
    assert woke == [("x", 10.05), ("y", 10.25)]


@pytest.mark.asyncio
async def test_a_periodic_sleeper_ticks_at_every_period_within_one_advance() -> None:
    # What the media clock does: frame k is due at k * period. Sleepers that go back to sleep after waking
    # must be woken again during the same advance(), each time at its own deadline.
    clock = VirtualClock()
    period = 0.02
    times: list[float] = []

    async def ticker() -> None:
        for k in range(1, 51):
            await clock.sleep_until(k * period)
            times.append(clock.now())

    other: list[tuple[str, float]] = []
    task = await _started(ticker())
    await _started(_sleeper(clock, 0.5, "half", other))
    await advance(clock, 1.0)
    assert task.done()
    assert times == [k * period for k in range(1, 51)]  # exactly, not approximately
    assert other == [("half", 0.5)]


@pytest.mark.asyncio
async def test_a_task_created_just_before_advance_still_wakes_at_its_deadline() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []
    # The usual test pattern: start a task (session.start(), create_task) and move time at once. The task has not
    # run yet, so it is not asleep on the clock; advance() must let it get there before time moves, or it would
    # wake at the end of the advance (1.0) instead of at its deadline.
    task = asyncio.get_running_loop().create_task(_sleeper(clock, 0.25, "fresh", woke))
    await advance(clock, 1.0)
    assert task.done()
    assert woke == [("fresh", 0.25)]


@pytest.mark.asyncio
@pytest.mark.parametrize("offset", [-5.0, 0.0])
async def test_sleep_until_now_or_the_past_returns_at_once(offset: float) -> None:
    clock = VirtualClock(start=3.0)
    await asyncio.wait_for(clock.sleep_until(3.0 + offset), timeout=1.0)  # no advance() needed
    assert clock.now() == 3.0
    assert clock.next_deadline is None  # and it left no sleeper behind


@pytest.mark.asyncio
async def test_cancelled_sleeper_does_not_break_advance() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []
    doomed = await _started(_sleeper(clock, 0.1, "doomed", woke))
    await _started(_sleeper(clock, 0.2, "kept", woke))
    assert clock.next_deadline == 0.1
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert clock.next_deadline == 0.2  # the cancelled one no longer counts
    await advance(clock, 1.0)
    assert woke == [("kept", 0.2)]
    assert clock.next_deadline is None and clock.now() == 1.0


@pytest.mark.asyncio
async def test_advance_backwards_raises_and_keeps_time() -> None:
    clock = VirtualClock(start=2.0)
    with pytest.raises(ValueError, match="backwards"):
        await advance(clock, -0.001)
    assert clock.now() == 2.0


@pytest.mark.asyncio
async def test_next_deadline_is_the_earliest_pending() -> None:
    clock = VirtualClock()
    assert clock.next_deadline is None
    woke: list[tuple[str, float]] = []
    for name, t in [("b", 0.7), ("a", 0.4), ("c", 0.9)]:
        await _started(_sleeper(clock, t, name, woke))
    assert clock.next_deadline == 0.4
    await advance(clock, 0.5)
    assert clock.next_deadline == 0.7
    await advance(clock, 0.5)
    assert clock.next_deadline is None


@pytest.mark.asyncio
async def test_settle_lets_executor_work_finish_before_time_moves_on() -> None:
    # A frame rendered in an executor thread: with settle > 0 the task gets its result back and goes to sleep
    # for its next deadline while time is still at the first one, so it wakes at 0.2, not at the end (1.0).
    clock = VirtualClock()
    times: list[float] = []

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        for deadline in (0.1, 0.2):
            await clock.sleep_until(deadline)
            await loop.run_in_executor(None, time.sleep, 0.001)
            times.append(clock.now())

    task = await _started(worker())
    await advance(clock, 1.0, settle=0.2)
    assert task.done()
    assert times == [0.1, 0.2]


def test_both_clocks_satisfy_the_protocol() -> None:
    clocks: list[Clock] = [MonotonicClock(), VirtualClock()]
    for clock in clocks:
        assert callable(clock.now) and asyncio.iscoroutinefunction(clock.sleep_until)


@pytest.mark.asyncio
@pytest.mark.parametrize("delay", [0.05, 0.12])
async def test_monotonic_clock_sleeps_about_the_asked_time(delay: float) -> None:
    clock = MonotonicClock()
    start = clock.now()
    assert start == pytest.approx(asyncio.get_running_loop().time(), abs=0.01)
    t0 = time.monotonic()
    await clock.sleep_until(start + delay)
    slept = time.monotonic() - t0
    assert clock.now() >= start + delay - 1e-3  # asyncio may fire a timer up to its clock resolution early
    assert delay - 1e-3 <= slept < delay + 0.2


@pytest.mark.asyncio
async def test_monotonic_clock_past_deadline_returns_at_once() -> None:
    clock = MonotonicClock()
    t0 = time.monotonic()
    await clock.sleep_until(clock.now() - 10.0)
    assert time.monotonic() - t0 < 0.05
    assert clock.now() == pytest.approx(time.monotonic(), abs=0.05)  # the loop's monotonic time, not epoch seconds
