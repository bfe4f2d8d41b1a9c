"""Runs in an object store: every answer waits until what it says is durable, nothing waits
forever, and no failure leaves a run half-changed.

A request runs one transition (``transitions``) under its run's lock, on the
immutable state: it computes the new state, encodes it (a state JSON cannot hold
is refused here, before anything is swapped), stores the objects the new state
will refer to (round records, snapshots, report metrics), and only then swaps it
in. It answers only after a write that includes its change is durable.

Writes are batched (group commit): while one write is under way, the requests
arriving meanwhile change the state and wait; the next write covers all of them.
A batch is one log object of the members that changed, or, when a round
completed, a new base (``persist``). When a write fails, the state falls back to
the last durable one, and every request whose change was not yet durable gets a
``StoreError`` (503: retry; leases and reports are idempotent). Every wait is
bounded: a run whose lock or write does not come in time answers 503, and
:meth:`RunRepository.stuck` tells the liveness probe about a write that hangs.

Before each write the repository checks its writer lease (``ownership``), so a
controller that lost its store to another one stops writing instead of
overwriting it.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from controller_service.contract.keys import (
    init_checkpoint_key,
    policy_snapshot_key,
    report_metrics_key,
    round_record_key,
    run_log_key,
    run_log_prefix,
    run_state_key,
)
from controller_service.contract.store import ObjectNotFound, ObjectStore, StoreError
from controller_service.runs import persist, transitions, views
from controller_service.runs.errors import RunBusy, RunConflict, RunError, RunNotFound
from controller_service.runs.ownership import NoLock, WriterLock
from controller_service.runs.reports import CheckedReport, MemberReport
from controller_service.runs.spec import RunSpec
from controller_service.runs.state import RunState
from controller_service.search.base import JSON, SearchStrategy, make_strategy
from controller_service.search.options import DEFAULT_GAMMA, DEFAULT_TRANSFER_MODE

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
LOCK_TIMEOUT = 30.0  # seconds a request waits for its run's lock before answering 503
WRITE_TIMEOUT = 60.0  # seconds a request waits for its change to be durable before 503
LOG_LIMIT = 64  # log objects per base before the state is rewritten whole (also >= m)


class RunEvents:
    """What the repository tells the metrics and the held lease requests."""

    def lease_issued(self, reissued_expired: bool) -> None: ...

    def report(self, outcome: str) -> None:
        """``accepted``, ``duplicate`` or ``rejected``."""

    def round_completed(self, run_id: str) -> None:
        """A round is complete and durable: new work (or the end) for waiting workers."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class _Slot:
    """One run in memory: the latest and the durable state, and the writer's bookkeeping.

    ``version`` counts changes, ``persisted`` is the version known durable;
    ``generation`` changes when a write fails and the state falls back, so waiters
    on a change that was never written learn it.
    """

    cond: threading.Condition = field(default_factory=lambda: threading.Condition(threading.Lock()))
    state: RunState | None = None
    durable: RunState | None = None
    strategy: SearchStrategy | None = None
    base: int = 0  # number of the latest base (pending or durable)
    durable_base: int = 0
    seq: int = 0  # last durable log object of durable_base
    pending_base: bytes | None = None
    pending_base_state: RunState | None = None  # what pending_base encodes ...
    pending_base_version: int = 0  # ... as of this version
    pending_members: dict[int, bytes] = field(default_factory=dict)
    version: int = 0
    persisted: int = 0
    generation: int = 0
    writing_since: float | None = None  # monotonic, while a write is under way
    busy_since: float | None = None  # monotonic, while a request holds the lock
    rounds: dict[int, JSON] = field(default_factory=dict)  # completed round records (immutable)
    snapshots: dict[int, JSON] = field(default_factory=dict)


class RunRepository:
    """See the module docstring; ``clock`` is injectable so tests drive leases by hand."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        clock: Callable[[], float] = time.time,
        events: RunEvents | None = None,
        new_id: Callable[[], str] = new_run_id,
        writer: WriterLock | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._events = events or RunEvents()
        self._new_id = new_id
        self._writer = writer or NoLock()
        self._registry = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._scanned = False

    # -- the run registry --

    def _ensure_scanned(self) -> None:
        """Learn every run in the store once (lazily, so a store outage only delays it)."""
        if self._scanned:
            return
        with self._registry:
            if not self._scanned:
                for run_id in self.store.list_dirs("runs/"):
                    if _RUN_ID.match(run_id):
                        self._slots.setdefault(run_id, _Slot())
                self._scanned = True

    def _slot(self, run_id: str) -> _Slot:
        self._ensure_scanned()
        with self._registry:
            slot = self._slots.get(run_id) if isinstance(run_id, str) else None
        if slot is None:
            raise RunNotFound(f"no run {run_id!r}")
        return slot

    def run_ids(self) -> list[str]:
        self._ensure_scanned()
        with self._registry:
            return sorted(self._slots)

    # -- holding a run --

    @contextmanager
    def _held(self, run_id: str) -> Any:
        slot = self._slot(run_id)
        if not slot.cond.acquire(timeout=LOCK_TIMEOUT):
            raise RunBusy(f"run {run_id} is busy (its lock was not free within {LOCK_TIMEOUT:g} s)")
        slot.busy_since = time.monotonic()
        try:
            yield slot
        finally:
            slot.busy_since = None
            slot.cond.release()

    def _wait(self, slot: _Slot, timeout: float) -> None:
        slot.busy_since = None
        slot.cond.wait(timeout)
        slot.busy_since = time.monotonic()

    def _load(self, run_id: str, slot: _Slot) -> RunState:
        """The run's state (caller holds the lock), read from the store if not in memory."""
        if slot.state is not None:
            return slot.state
        try:
            raw = self.store.get_json(run_state_key(run_id))
        except ObjectNotFound:
            raise RunNotFound(f"no run {run_id!r}") from None
        if not isinstance(raw, dict):
            raise StoreError(f"{run_state_key(run_id)} is not a run state")
        if persist.is_v1(raw):
            loaded = persist.migrate_v1(raw)
            self._writer.check()
            for key, value in loaded.migrated.items():
                self.store.put(key, persist.dumps(value))
            self.store.put(run_state_key(run_id), persist.encode_base(loaded.state, loaded.base))
            state, base, seq = loaded.state, loaded.base, 0
            log.info("run %s: migrated its v1 state to the v2 layout", run_id)
        else:
            try:
                state, base = persist.decode_base(raw)
                seq = 0
                for key in self.store.list(run_log_prefix(run_id, base)):
                    state = persist.apply_log(state, self.store.get_json(key))
                    seq = int(key.rsplit("-", 1)[1].split(".")[0])
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"run {run_id}'s stored state cannot be read: {exc}") from exc
        slot.state = slot.durable = state
        slot.base = slot.durable_base = base
        slot.seq, slot.version, slot.persisted = seq, 0, 0
        slot.strategy = make_strategy(state.spec.strategy, state.spec.strategy_settings())
        return state

    # -- transactions --

    def _context(self, run_id: str, slot: _Slot) -> transitions.Context:
        assert slot.strategy is not None

        def accepted(round_: int, member: int) -> tuple[str, CheckedReport] | None:
            candidate = self._round(run_id, slot, round_)["candidates"][member]
            losses = candidate.get("losses")
            names = slot.state.spec.loss_names if slot.state else ()
            checked = CheckedReport(
                outcome=candidate["outcome"],
                losses=tuple(losses[n] for n in names) if losses else None,
                pq=candidate.get("pq"),
                checkpoint_uri=candidate.get("checkpoint_uri"),
                reason=candidate.get("reason"),
            )
            aid = candidate.get("assignment_id")
            return (aid, checked) if aid else None

        return transitions.Context(
            now=self._clock(), uri_of=self.store.uri_of, strategy=slot.strategy, accepted=accepted
        )

    def _transact(
        self, run_id: str, step: Callable[[RunState, transitions.Context], transitions.Change]
    ) -> transitions.Change:
        """Apply ``step`` and wait until it is durable (see the module docstring). Every
        outcome, refusals included, waits for what it observed: a 409 or a ``duplicate``
        may rest on a change that is still being written."""
        with self._held(run_id) as slot:
            state = self._load(run_id, slot)
            try:
                change = step(state, self._context(run_id, slot))
            except RunError:
                self._durable(run_id, slot, slot.version)
                raise
            if change.changed:
                self._stage(run_id, slot, change)
            self._durable(run_id, slot, slot.version)
        self._announce(run_id, change)
        return change

    def _stage(self, run_id: str, slot: _Slot, change: transitions.Change) -> None:
        """Encode, store what the change refers to, then swap it in (caller holds the lock)."""
        new = change.state
        rebase = change.rebase or slot.seq + 1 >= max(LOG_LIMIT, new.spec.population)
        if rebase:
            encoded_base = persist.encode_base(new, slot.base + 1)
        else:
            assert new.open is not None
            encoded = {j: persist.encode_member(new.open.members[j]) for j in change.members}
        self._writer.check()
        for key, value in change.writes(run_id).items():
            self.store.put(key, persist.dumps(value))
        if change.record is not None:
            slot.rounds[change.completed_round] = change.record
        if change.snapshot is not None:
            slot.snapshots[change.completed_round] = change.snapshot
        slot.state = new
        slot.version += 1
        if rebase:
            slot.base += 1
            slot.pending_base, slot.pending_base_state = encoded_base, new
            slot.pending_base_version = slot.version
            slot.pending_members.clear()
        else:
            slot.pending_members.update(encoded)

    def _durable(self, run_id: str, slot: _Slot, version: int) -> None:
        """Wait (caller holds the lock) until ``version`` is durable, writing batches as the
        leader when nobody else is writing."""
        generation = slot.generation
        deadline = time.monotonic() + WRITE_TIMEOUT
        while slot.persisted < version:
            if slot.generation != generation:
                raise StoreError(f"run {run_id}: the state write failed; nothing was changed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(
                    f"run {run_id}: the store did not confirm the write within {WRITE_TIMEOUT:g} s"
                )
            if slot.writing_since is not None:
                self._wait(slot, remaining)
            else:
                self._write_batch(run_id, slot)

    def _write_batch(self, run_id: str, slot: _Slot) -> None:
        """Write what is pending (caller holds the lock; it is released while writing): the
        new base if a round completed, then a log object of the members changed since."""
        batch, state = slot.version, slot.state
        base, encoded_base, base_state, base_version = (
            slot.base, slot.pending_base, slot.pending_base_state, slot.pending_base_version
        )  # fmt: skip
        members, slot.pending_members, slot.pending_base = slot.pending_members, {}, None
        seq = 1 if encoded_base is not None else slot.seq + 1
        slot.writing_since = time.monotonic()
        slot.cond.release()
        failure: BaseException | None = None
        base_written = False
        try:
            self._writer.check()
            if encoded_base is not None:
                self.store.put(run_state_key(run_id), encoded_base)
                base_written = True
            if members:
                data = persist.encode_log(base, seq, self._clock(), members)
                self.store.put(run_log_key(run_id, base, seq), data)
        except BaseException as exc:  # re-raised below, after the lock is back
            failure = exc
        finally:
            slot.cond.acquire()
            slot.writing_since = None
            slot.cond.notify_all()
        if base_written:  # durable even if the log after it failed
            old = slot.durable_base
            slot.durable, slot.durable_base, slot.seq = base_state, base, 0
            slot.persisted = max(slot.persisted, base_version)
            threading.Thread(target=self._forget_logs, args=(run_id, old), daemon=True).start()
        if failure is not None:
            slot.state, slot.base = slot.durable, slot.durable_base
            slot.pending_members, slot.pending_base = {}, None
            slot.version = slot.persisted
            slot.generation += 1
            if isinstance(failure, StoreError):
                raise failure
            raise StoreError(f"run {run_id}: state write failed: {failure!r}") from failure
        slot.persisted, slot.durable = batch, state
        if members:
            slot.seq = seq

    def _forget_logs(self, run_id: str, up_to_base: int) -> None:
        """Delete the log objects of bases up to ``up_to_base`` (superseded; best effort)."""
        try:
            for key in self.store.list(run_log_prefix(run_id)):
                if int(key.rsplit("/", 1)[1].split("-")[0]) <= up_to_base:
                    self.store.delete(key)
        except (StoreError, ValueError) as exc:
            log.info("run %s: old log objects stay for now: %s", run_id, exc)

    def _announce(self, run_id: str, change: transitions.Change) -> None:
        for reissued in change.issued:
            self._events.lease_issued(reissued)
        if change.completed_round is not None:
            self._events.round_completed(run_id)

    # -- stored objects of a run --

    def _round(self, run_id: str, slot: _Slot, round_: int) -> JSON:
        record = slot.rounds.get(round_)
        if record is None:
            record = slot.rounds[round_] = self.store.get_json(round_record_key(run_id, round_))
        return record

    def _snapshots(self, run_id: str, slot: _Slot, state: RunState) -> dict[int, JSON]:
        assert slot.strategy is not None
        rounds = views.snapshot_rounds(state, slot.strategy.has_policy)
        for t in rounds:
            if t not in slot.snapshots:
                slot.snapshots[t] = self.store.get_json(policy_snapshot_key(run_id, t))
        return {t: slot.snapshots[t] for t in rounds}

    def _observe(self, run_id: str) -> tuple[_Slot, RunState]:
        """The run's state once what it shows is durable (for reads)."""
        with self._held(run_id) as slot:
            state = self._load(run_id, slot)
            self._durable(run_id, slot, slot.version)
            return slot, state

    # -- API --

    def create(self, spec: RunSpec) -> JSON:
        if spec.seed is None:  # random but recorded, so the run can be repeated
            spec = replace(spec, seed=secrets.randbelow(2**31))
        self._ensure_scanned()
        strategy = make_strategy(spec.strategy, spec.strategy_settings())
        slot = _Slot(strategy=strategy)
        with self._registry:
            run_id = self._new_id()
            while run_id in self._slots:
                run_id = self._new_id()
            self._slots[run_id] = slot
        try:
            with slot.cond:
                state = transitions.create_state(
                    run_id,
                    spec,
                    now=self._clock(),
                    init_checkpoint_uri=self.store.uri_of(init_checkpoint_key(run_id)),
                    strategy=strategy,
                )
                slot.pending_base = persist.encode_base(state, 1)
                slot.pending_base_state, slot.pending_base_version = state, 1
                slot.state, slot.base, slot.version = state, 1, 1
                self._durable(run_id, slot, 1)
                return views.run_record(state)
        except BaseException:
            with self._registry:
                del self._slots[run_id]
            raise

    def get(self, run_id: str, history: bool = False) -> JSON:
        slot, state = self._observe(run_id)
        rounds = self.rounds(run_id) if history else None
        return views.run_record(state, rounds)

    def list(self) -> list[JSON]:
        records = []
        for run_id in self.run_ids():
            try:
                records.append(self.get(run_id))
            except RunNotFound:  # a folder without a state (a run's leftovers)
                continue
        return sorted(records, key=lambda r: (r["created_at"], r["id"]))

    def summaries(self) -> list[views.RunSummary]:
        """One line per run for the metrics (what is in memory; no waiting for writes)."""
        out = []
        for run_id in self.run_ids():
            try:
                with self._held(run_id) as slot:
                    out.append(views.summary(self._load(run_id, slot)))
            except RunNotFound:
                continue
        return out

    def rounds(self, run_id: str, start: int = 0, stop: int | None = None) -> list[JSON]:
        """The completed rounds' records ``start..stop-1`` (read once, then from memory)."""
        slot, state = self._observe(run_id)
        stop = state.completed_rounds if stop is None else min(stop, state.completed_rounds)
        return [self._round(run_id, slot, t) for t in range(max(start, 0), stop)]

    def round(self, run_id: str, round_: int, metrics: bool = False) -> JSON:
        slot, state = self._observe(run_id)
        if not 0 <= round_ < state.completed_rounds:
            raise RunNotFound(f"run {run_id} has no completed round {round_}")
        record = self._round(run_id, slot, round_)
        if not metrics:
            return record
        candidates = []
        for c in record["candidates"]:
            key = report_metrics_key(run_id, round_, c["member"])
            extra = self.store.get_json(key) if c.get("has_metrics") else None
            candidates.append({**c, "metrics": extra})
        return {**record, "candidates": candidates}

    def open_round(self, run_id: str) -> JSON:
        return views.open_round_view(self._observe(run_id)[1])

    def lease(self, run_id: str, worker: str) -> JSON:
        return self.lease_many(run_id, [worker])[worker]

    def lease_many(self, run_id: str, workers: Sequence[str]) -> dict[str, JSON]:
        """Lease for several workers in one transaction (one lock, one write): how the
        service serves the workers held for a round when it opens."""
        change = self._transact(run_id, lambda s, ctx: transitions.lease_many(s, workers, ctx))
        return change.answer

    def heartbeat(self, run_id: str, aid: str) -> JSON:
        return self._transact(run_id, lambda s, ctx: transitions.heartbeat(s, aid, ctx)).answer

    def report(self, run_id: str, aid: str, rep: MemberReport) -> JSON:
        try:
            change = self._transact(run_id, lambda s, ctx: transitions.report(s, aid, rep, ctx))
        except RunError:
            self._events.report("rejected")
            raise
        self._events.report(change.answer["state"])
        return change.answer

    def policy(self, run_id: str) -> JSON:
        slot, state = self._observe(run_id)
        if slot.strategy is not None and not slot.strategy.has_policy:
            raise RunConflict(f"run {run_id} uses strategy {state.spec.strategy!r}: no policy")
        return views.policy_document(state, self._snapshots(run_id, slot, state))

    def weights(
        self,
        run_id: str,
        losses: Mapping[str, float] | None,
        epoch: int,
        epochs: int,
        mode: str = DEFAULT_TRANSFER_MODE,
        gamma: float = DEFAULT_GAMMA,
    ) -> JSON:
        slot, state = self._observe(run_id)
        snapshots = self._snapshots(run_id, slot, state)
        return views.transfer_weights_for(state, snapshots, losses, epoch, epochs, mode, gamma)

    def stuck(self, threshold: float) -> list[str]:
        """Runs whose lock or write has been held longer than ``threshold`` seconds: the
        liveness probe fails on them, so a wedged process is restarted."""
        now = time.monotonic()
        with self._registry:
            slots = list(self._slots.items())
        out = []
        for run_id, slot in slots:
            for what, since in (("write", slot.writing_since), ("lock", slot.busy_since)):
                if since is not None and now - since > threshold:
                    out.append(f"run {run_id}: {what} held for {now - since:.0f} s")
        return out
