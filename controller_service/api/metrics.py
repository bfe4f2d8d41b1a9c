"""Prometheus metrics of the controller (``GET /metrics``).

Counters count what this process did since it started (Prometheus handles the
reset after a restart); the per-run gauges are read from the run states at
scrape time, so they are right even just after a restart.

=====================================  =========================================================
``adaseg_runs{status}``                runs by status (running, finished, failed)
``adaseg_run_rounds_completed{run}``   rounds completed per run, the pseudo epoch included
``adaseg_run_best_pq{run}``            PQ of the run's best member (the broadcast model)
``adaseg_rounds_completed_total``      rounds completed by this process
``adaseg_leases_issued_total``         assignments issued
``adaseg_leases_expired_total``        assignments issued again after a lease passed its deadline
``adaseg_reports_total{outcome}``      reports accepted, duplicate (accepted once) or rejected
=====================================  =========================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from controller_service.contract.store import StoreError
from controller_service.runs import RunError, RunEvents
from controller_service.runs.state import FAILED, FINISHED, RUNNING
from controller_service.runs.views import RunSummary

log = logging.getLogger(__name__)
REPORT_OUTCOMES = ("accepted", "duplicate", "rejected")


class _RunGauges:
    """A collector that reads the run summaries at each scrape."""

    def __init__(self, summaries: Callable[[], Iterable[RunSummary]]) -> None:
        self._summaries = summaries

    def collect(self) -> Iterator[Metric]:
        try:
            summaries = list(self._summaries())
        except (StoreError, RunError) as exc:  # /metrics answers even when a run cannot
            log.warning("metrics: run states unavailable: %s", exc)
            return
        by_status = GaugeMetricFamily("adaseg_runs", "Runs by status", labels=["status"])
        for status in (RUNNING, FINISHED, FAILED):
            by_status.add_metric([status], sum(s.status == status for s in summaries))
        rounds = GaugeMetricFamily(
            "adaseg_run_rounds_completed",
            "Rounds completed per run, the pseudo epoch (round 0) included",
            labels=["run"],
        )
        best = GaugeMetricFamily(
            "adaseg_run_best_pq",
            "PQ of the run's best member (the broadcast model)",
            labels=["run"],
        )
        for summary in summaries:
            rounds.add_metric([summary.run_id], summary.completed_rounds)
            if summary.best_pq is not None:
                best.add_metric([summary.run_id], summary.best_pq)
        yield from (by_status, rounds, best)


class ServiceMetrics(RunEvents):
    """The service's registry; the run repository reports its events here."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: timestamps of process start are noise
        self.registry = CollectorRegistry()
        self._leases = Counter(
            "adaseg_leases_issued", "Assignments issued to trainers", registry=self.registry
        )
        self._expired = Counter(
            "adaseg_leases_expired",
            "Assignments issued again after a lease passed its deadline without a report",
            registry=self.registry,
        )
        self._reports = Counter(
            "adaseg_reports",
            "Reports by outcome: accepted, duplicate (accepted once) or rejected (4xx)",
            ["outcome"],
            registry=self.registry,
        )
        self._rounds = Counter(
            "adaseg_rounds_completed",
            "Rounds completed by this process, the pseudo epoch included",
            registry=self.registry,
        )
        for outcome in REPORT_OUTCOMES:  # export zeros, so rates work from the first scrape
            self._reports.labels(outcome)

    def track_runs(self, summaries: Callable[[], Iterable[RunSummary]]) -> None:
        """Export per-run gauges from ``summaries`` (called at each scrape)."""
        self.registry.register(_RunGauges(summaries))

    def lease_issued(self, reissued_expired: bool) -> None:
        self._leases.inc()
        if reissued_expired:
            self._expired.inc()

    def report(self, outcome: str) -> None:
        self._reports.labels(outcome).inc()

    def round_completed(self, run_id: str) -> None:
        self._rounds.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
