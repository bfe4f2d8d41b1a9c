"""The worker's lease heartbeat (trainer_image/jobs/heartbeat.py): a slow answer does not hold
back the next beat, a refusal abandons the assignment, and nothing counts after it stops."""

from __future__ import annotations

import threading

from controller_service.contract.client import Conflict, ServerUnavailable
from trainer_image.jobs.heartbeat import MAX_IN_FLIGHT, Heartbeat

INTERVAL = 0.01
PATIENCE = 10.0  # seconds to wait for something that takes milliseconds


class Beats:
    """A beat that records its calls; the first one blocks until released, as a heartbeat
    whose answer waits for a stalled store write does."""

    def __init__(self, first_raises: Exception | None = None) -> None:
        self.calls = 0
        self.released = threading.Event()
        self.enough = threading.Event()
        self.first_raises = first_raises
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call >= 3:
            self.enough.set()
        if call == 1:
            self.released.wait(PATIENCE)
            if self.first_raises is not None:
                raise self.first_raises


def test_a_beat_waiting_for_its_answer_does_not_hold_back_the_next() -> None:
    beats, lost = Beats(), threading.Event()
    with Heartbeat(beats, INTERVAL, lost):
        assert beats.enough.wait(PATIENCE)  # two more beats left while the first waited
        assert not beats.released.is_set()
        beats.released.set()
    assert not lost.is_set()


def test_beats_in_flight_are_capped_while_the_controller_does_not_answer() -> None:
    gate, lost = threading.Event(), threading.Event()
    calls: list[int] = []
    capped = threading.Event()

    def stalled() -> None:
        calls.append(1)
        if len(calls) == MAX_IN_FLIGHT:
            capped.set()
        gate.wait(PATIENCE)

    with Heartbeat(stalled, INTERVAL, lost):
        assert capped.wait(PATIENCE)
        threading.Event().wait(20 * INTERVAL)  # twenty more ticks: none may start a beat
        assert len(calls) == MAX_IN_FLIGHT
        gate.set()
    assert not lost.is_set()


def test_a_refused_beat_marks_the_lease_lost_and_beating_stops() -> None:
    lost, calls = threading.Event(), []

    def refused() -> None:
        calls.append(1)
        raise Conflict(409, "assignment r000-m00-a1 was issued again")

    heartbeat = Heartbeat(refused, INTERVAL, lost)
    with heartbeat:
        assert lost.wait(PATIENCE)
        heartbeat._thread.join(PATIENCE)  # the loop ends on its own once the lease is lost
        assert not heartbeat._thread.is_alive()
    assert len(calls) <= MAX_IN_FLIGHT  # at most the beats that had already left


def test_transient_failures_keep_beating() -> None:
    lost, calls, enough = threading.Event(), [], threading.Event()

    def unreachable() -> None:
        calls.append(1)
        if len(calls) >= 3:
            enough.set()
        raise ServerUnavailable("connection refused")

    with Heartbeat(unreachable, INTERVAL, lost):
        assert enough.wait(PATIENCE)
    assert not lost.is_set()


def test_a_refusal_answered_after_the_heartbeat_stopped_changes_nothing() -> None:
    """The next assignment clears and reuses ``lost``: a late answer about the previous one
    (reported and done with) must not abandon it."""
    beats = Beats(first_raises=Conflict(409, "stale"))
    lost = threading.Event()
    with Heartbeat(beats, INTERVAL, lost):
        assert beats.enough.wait(PATIENCE)
    beats.released.set()  # the stalled first beat is refused only now
    for thread in threading.enumerate():
        if thread.name == "heartbeat-beat":
            thread.join(PATIENCE)
    assert not lost.is_set()
