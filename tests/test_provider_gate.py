"""The provider gate: a lease on a ``provider_slots`` row, shared by every process on the database."""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from autopack.db.engine import dispose_engines, session_scope
from autopack.db.handle import database_at
from autopack.db.models import ProviderSlot, utcnow
from autopack.execution.provider_gate import ProviderGate, ProviderSlotTimeout, provider_gate
from autopack.llm.base import LLMRequest, ProviderAuthError
from autopack.llm.gated import GatedProvider


def slot_rows(url: str, name: str = "llm") -> dict[int, tuple[str | None, Any]]:
    with session_scope(url) as db:
        rows = db.execute(sa.select(ProviderSlot.slot, ProviderSlot.owner, ProviderSlot.expires_at)
                          .where(ProviderSlot.name == name)).all()
    return {slot: (owner, expires) for slot, owner, expires in rows}


def _hold_slots(url: str, size: int, rounds: int, hold: float, start: Any, out: Any) -> None:
    """A process taking the gate ``rounds`` times from three threads; reports (acquired, released) times."""
    import threading

    gate = ProviderGate(database_at(url), "llm", size, max_wait=120)
    intervals: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(rounds):
            with gate.slot():
                began = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the host
                time.sleep(hold)
                ended = time.monotonic()
            with lock:
                intervals.append((began, ended))

    start.wait(60)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    out.put(intervals)
    dispose_engines()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def test_concurrent_processes_never_hold_more_slots_than_the_size(db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [context.Process(target=_hold_slots, args=(db_url, 2, 4, 0.03, start, out)) for _ in range(3)]
    for process in processes:
        process.start()
    start.set()
    intervals = [interval for _ in processes for interval in out.get(timeout=180)]
    for process in processes:
        process.join(60)
    assert len(intervals) == 3 * 3 * 4  # every call got its slot
    assert max_overlap(intervals) <= 2
    assert all(owner is None for owner, _ in slot_rows(db_url).values())  # all given back


def test_an_expired_slot_is_taken_over(db_url: str) -> None:
    dead = ProviderGate(database_at(db_url), "llm", 1, max_wait=5)
    assert dead.try_acquire("dead-process#0") == 0
    with session_scope(db_url) as db:
        db.execute(sa.update(ProviderSlot).values(expires_at=utcnow() - timedelta(seconds=1)))
    other = ProviderGate(database_at(db_url), "llm", 1, max_wait=5)
    with other.slot() as number:
        assert number == 0
        owner, _ = slot_rows(db_url)[0]
        assert owner is not None and owner != "dead-process#0"
        assert dead.renew() == set()  # the old holder finds it gone and stops renewing it
        assert slot_rows(db_url)[0][0] == owner


def test_a_held_slot_is_not_taken_and_waiting_is_bounded(db_url: str) -> None:
    holder = ProviderGate(database_at(db_url), "llm", 1)
    waiter = ProviderGate(database_at(db_url), "llm", 1, max_wait=0.3)
    with holder.slot():
        with pytest.raises(ProviderSlotTimeout) as info:
            waiter.acquire()
    assert "AUTOPACK_PROVIDER_CONCURRENCY" in info.value.one_line()
    with waiter.slot() as number:  # free again once given back
        assert number == 0


def test_renewal_keeps_a_long_call_slot(db_url: str) -> None:
    holder = ProviderGate(database_at(db_url), "llm", 1, ttl=0.3)
    other = ProviderGate(database_at(db_url), "llm", 1)
    with holder.slot():
        time.sleep(1.2)  # four lease lengths: only renewals keep it
        assert other.try_acquire() is None
        _, expires = slot_rows(db_url)[0]
        assert expires > utcnow()
    assert other.try_acquire() == 0
    other.release(0)


def test_slot_is_released_when_the_call_fails(db_url: str) -> None:
    gate = ProviderGate(database_at(db_url), "llm", 1, max_wait=0.5)

    class Failing:
        name, model, max_output_tokens = "sim", "m", 1000

        def complete(self, request: LLMRequest) -> Any:
            raise ProviderAuthError("401", provider="sim")

    provider = GatedProvider(Failing(), gate=gate.slot)
    for _ in range(3):  # with one slot, a leaked slot (or semaphore) would time out the second call
        with pytest.raises(ProviderAuthError):
            provider.complete(LLMRequest(system="s", prompt="p", max_tokens=10))
    assert slot_rows(db_url)[0][0] is None


def test_slots_above_the_size_are_ignored(db_url: str) -> None:
    wide = ProviderGate(database_at(db_url), "llm", 3)
    taken = [wide.try_acquire() for _ in range(3)]
    assert sorted(taken) == [0, 1, 2]  # type: ignore[type-var]
    wide.release(2)
    narrow = ProviderGate(database_at(db_url), "llm", 2)
    assert narrow.try_acquire() is None  # slot 2 is free, but not part of a gate of size 2
    for number in (0, 1):
        wide.release(number)


def test_size_zero_switches_the_gate_off(db_url: str) -> None:
    assert provider_gate(database_at(db_url), "llm", 0) is None
    assert provider_gate(database_at(db_url), "llm", 2) is provider_gate(database_at(db_url), "llm", 2)  # one per process
