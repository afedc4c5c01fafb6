"""The provider gate: at most N provider calls in flight across every drain that shares the database.

A slot is a lease on one ``provider_slots`` row (name, slot). Taking it is one ``UPDATE … RETURNING``: on
PostgreSQL the row is picked with ``SELECT … FOR UPDATE SKIP LOCKED`` (concurrent takers skip each other's rows
instead of queueing), on SQLite the single writer makes the conditional ``UPDATE … WHERE owner IS NULL OR
expires_at < now`` atomic. A held slot is renewed while the call runs (a call may take many minutes), released
right after it, and taken over once its lease expired (the process holding it died).

In front of the database sits a process-local semaphore of the same size, so a process never polls for a slot
it could not use and its threads wait for each other without touching the database. Waiting for a slot held by
*another process* (possibly on another host) cannot be event-driven through a plain SQL database: it is polling
with capped exponential backoff (5 ms growing to 250 ms, with jitter), woken early when a thread of this process
gives a slot back, and bounded by ``max_wait``. Slots numbered ``size`` and above are ignored, so lowering the
setting takes effect for every process that reads the new value.

Expiry is judged by this host's clock (as phase leases are): hosts sharing a database need synchronised clocks
(NTP) for takeovers to happen on time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, cast

import sqlalchemy as sa

from autopack.db.models import ProviderSlot, utcnow
from autopack.llm.base import LLMProvider, ProviderTransientError
from autopack.llm.gated import GatedProvider
from autopack.logging import get_logger

if TYPE_CHECKING:
    from autopack.db.handle import Database

log = get_logger(__name__)

#: A slot whose holder stopped renewing is free again after this long.
DEFAULT_TTL_SECONDS = 30.0
#: Longest wait for a slot before the call fails (a phase timeout usually ends the phase earlier).
DEFAULT_MAX_WAIT_SECONDS = 600.0
POLL_FIRST_SECONDS = 0.005
POLL_CAP_SECONDS = 0.25
#: Waits longer than this are logged, so a saturated gate is visible in the drain's logs.
LOG_WAIT_SECONDS = 1.0

_SLOTS = cast(sa.Table, ProviderSlot.__table__)  # declared as a FromClause; a mapped class's table is a Table


class ProviderSlotTimeout(ProviderTransientError):
    """No provider slot became free within the gate's bound."""


class ProviderGate:
    """``with gate.slot(): call()`` — see the module docstring. One instance per process and gate name."""

    def __init__(
        self,
        db: Database,
        name: str,
        size: int,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        if size < 1:
            raise ValueError("a provider gate needs at least one slot")
        self.db = db
        self.name = name
        self.size = size
        self.ttl = ttl
        self.max_wait = max_wait
        self._owner_prefix = f"{owner_prefix(socket.gethostname(), os.getpid())}{secrets.token_hex(3)}"
        self._tokens = itertools.count()
        self._local = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        #: slot → owner token of the acquisition holding it (a token per acquisition, never reused).
        self._held: dict[int, str] = {}
        self._rows_ready = False
        self._renewer: threading.Thread | None = None
        self._postgres = self.db.engine.dialect.name == "postgresql"

    # --- public -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        """Hold one slot for the duration of the block; it is released on any exit, error or not."""
        number = self.acquire()
        try:
            yield number
        finally:
            self.release(number)

    def acquire(self) -> int:
        """Take a slot, waiting (bounded by ``max_wait``) while all are held; returns its number."""
        started = time.monotonic()
        deadline = started + self.max_wait
        if not self._local.acquire(timeout=self.max_wait):
            raise self._timeout()
        try:
            delay = POLL_FIRST_SECONDS
            while True:
                number = self._claim(f"{self._owner_prefix}#{next(self._tokens)}")
                if number is not None:
                    waited = time.monotonic() - started
                    if waited >= LOG_WAIT_SECONDS:
                        log.info("provider gate %s: waited %.1fs for a slot (size %d)", self.name, waited, self.size)
                    return number
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout()
                with self._released:  # a slot given back by this process wakes the wait at once
                    self._released.wait(min(remaining, delay * random.uniform(0.5, 1.0)))
                delay = min(POLL_CAP_SECONDS, delay * 2)
        except BaseException:
            self._local.release()
            raise

    def try_acquire(self, token: str | None = None) -> int | None:
        """One attempt, without waiting, to take a slot; None when all are held. Give it back with ``release``."""
        if not self._local.acquire(blocking=False):
            return None
        try:
            number = self._claim(token or f"{self._owner_prefix}#{next(self._tokens)}")
        except BaseException:
            self._local.release()
            raise
        if number is None:
            self._local.release()
        return number

    def _claim(self, token: str) -> int | None:
        """Take a free (or expired) slot in the database for ``token``; None when all are held."""
        self._ensure_rows()
        now = utcnow()
        free = sa.or_(_SLOTS.c.owner.is_(None), _SLOTS.c.expires_at < now)
        pick = (
            sa.select(_SLOTS.c.slot)
            .where(_SLOTS.c.name == self.name, _SLOTS.c.slot < self.size, free)
            .order_by(_SLOTS.c.slot)
            .limit(1)
        )
        if self._postgres:
            pick = pick.with_for_update(skip_locked=True)
        claim = (
            sa.update(_SLOTS)
            .where(_SLOTS.c.name == self.name, _SLOTS.c.slot == pick.scalar_subquery(), free)
            .values(owner=token, expires_at=now + timedelta(seconds=self.ttl))
            .returning(_SLOTS.c.slot)
        )
        with self._transaction() as connection:
            number = connection.execute(claim).scalar_one_or_none()
        if number is None:
            return None
        with self._lock:
            self._held[int(number)] = token
        self._start_renewer()
        return int(number)

    def release(self, number: int) -> None:
        """Give a slot back (only if this acquisition still holds it) and wake a waiting thread."""
        with self._lock:
            token = self._held.pop(number, None)
        try:
            if token is not None:
                with self._transaction() as connection:
                    connection.execute(
                        sa.update(_SLOTS)
                        .where(_SLOTS.c.name == self.name, _SLOTS.c.slot == number, _SLOTS.c.owner == token)
                        .values(owner=None, expires_at=None)
                    )
        finally:
            with self._released:
                self._released.notify()
            self._local.release()

    def renew(self) -> set[int]:
        """Extend every slot this process holds; returns the ones still held. A slot found taken over (it
        expired, e.g. while the database was unreachable) is logged and no longer counted as held."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return set()
        expires = utcnow() + timedelta(seconds=self.ttl)
        with self._transaction() as connection:
            kept = {
                int(n)
                for n in connection.execute(
                    sa.update(_SLOTS)
                    .where(_SLOTS.c.name == self.name, _SLOTS.c.owner.in_(list(held.values())))
                    .values(expires_at=expires)
                    .returning(_SLOTS.c.slot)
                ).scalars()
            }
        self._forget({n: token for n, token in held.items() if n not in kept}, "expired and was taken over")
        return kept

    # --- internals -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One short write transaction. On PostgreSQL its commit does not wait for the WAL flush: a slot is
        ephemeral coordination state, and after a server crash a lost update only frees or holds a slot until
        its lease runs out, while waiting for the flush would cost a disk sync per call."""
        with self.db.engine.begin() as connection:
            if self._postgres:
                connection.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
            yield connection

    def _timeout(self) -> ProviderSlotTimeout:
        return ProviderSlotTimeout(
            f"no provider slot of {self.name} free within {self.max_wait:g}s ({self.size} slots, all held)",
            provider=self.name,
            hint="raise AUTOPACK_PROVIDER_CONCURRENCY or run fewer drains at once",
        )

    def _ensure_rows(self) -> None:
        if self._rows_ready:
            return
        rows = [{"name": self.name, "slot": n} for n in range(self.size)]
        statement: sa.Executable
        if self._postgres:
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert

            statement = postgresql_insert(_SLOTS).values(rows).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            statement = sqlite_insert(_SLOTS).values(rows).on_conflict_do_nothing()
        with self.db.engine.begin() as connection:
            connection.execute(statement)
        self._rows_ready = True

    def _forget(self, lost: dict[int, str], why: str) -> None:
        """Stop holding slots that are no longer ours (their calls go on; ``release`` then only frees the
        semaphore)."""
        for number, token in lost.items():
            with self._lock:
                if self._held.get(number) != token:
                    continue  # released (and maybe taken again) meanwhile
                del self._held[number]
            log.warning("provider gate %s: slot %d %s", self.name, number, why)

    def _start_renewer(self) -> None:
        with self._lock:
            if self._renewer is not None:
                return
            self._renewer = threading.Thread(target=self._renew_loop, name=f"provider-gate-{self.name}", daemon=True)
            renewer = self._renewer
        renewer.start()

    def _renew_loop(self) -> None:
        """Renew held slots every third of the lease; ends when none is held (the next acquisition restarts it)."""
        renewed = time.monotonic()
        while True:
            time.sleep(self.ttl / 3)
            with self._lock:
                if not self._held:
                    self._renewer = None
                    return
            try:
                self.renew()
                renewed = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a database hiccup: the next round retries before expiry
                log.warning("provider gate %s: renewal failed: %s", self.name, exc)
                if time.monotonic() - renewed > self.ttl:  # expired by now: others may hold them
                    with self._lock:
                        stale = dict(self._held)
                    self._forget(stale, "could not be renewed before its lease ran out")


def owner_prefix(host: str, pid: int) -> str:
    """What every slot owner of process ``pid`` on ``host`` starts with."""
    return f"{host}:{pid}:"


def release_process_slots(db: Database, pid: int, host: str | None = None) -> int:
    """Give back every slot a killed process held (instead of leaving them until they expire)."""
    prefix = owner_prefix(host or socket.gethostname(), pid)
    with db.engine.begin() as connection:
        return connection.execute(
            sa.update(_SLOTS).where(_SLOTS.c.owner.startswith(prefix, autoescape=True)).values(owner=None, expires_at=None)
        ).rowcount


_gates: dict[tuple[str, str, int], ProviderGate] = {}
_gates_lock = threading.Lock()


def provider_gate(db: Database, name: str, size: int) -> ProviderGate | None:
    """This process's gate for ``name`` (None when ``size`` is 0: the gate is switched off)."""
    if size <= 0:
        return None
    key = (db.url, name, size)
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = ProviderGate(db, name, size)
        return gate


def gated(provider: LLMProvider, db: Database, size: int) -> LLMProvider:
    """``provider`` with every call behind the gate named after it (unchanged when ``size`` is 0)."""
    gate = provider_gate(db, provider.name, size)
    return provider if gate is None else GatedProvider(provider, gate=gate.slot)


def gated_settings_provider(db: Database, size: int) -> LLMProvider | None:
    """The settings' provider behind the gate, or None when there is no gate (``size`` 0).

    None also when the provider cannot be built (e.g. a missing key): the phase executor then meets the same
    error itself and fails the phase before any call, exactly as without a gate.
    """
    if size <= 0:
        return None
    from autopack.errors import AutopackError
    from autopack.llm import get_provider

    try:
        provider = get_provider()
    except AutopackError:
        return None
    return gated(provider, db, size)
