"""The bounds of every value the API takes, stated once.

The API schema (``schemas``) shows them in ``/openapi.json``; the run state
machine (``controller_service.runs``) enforces them for every caller, HTTP or
not. They are the ranges the maths and the lease protocol survive: a sigma or
learning rate outside them overflows the policy within a round, a lease
shorter than a few heartbeats livelocks the workers that share a member, and
unbounded free-form metrics would bloat every write (docs/design.md,
"Reliability").
"""

from __future__ import annotations

MIN_POPULATION, MAX_POPULATION = 2, 1024
MIN_ROUNDS, MAX_ROUNDS = 1, 1000
MAX_LOSSES = 64
MAX_LOSS_NAME_LENGTH = 64
MAX_NAME_LENGTH = 200  # run names and worker names
MAX_HIDDEN = 1024
MAX_POLICY_STEPS = 100
MAX_SEED = 2**63 - 1
MAX_SIGMA = 1000.0  # exclusive minimum 0
MAX_POLICY_LR = 1.0  # exclusive minimum 0
MAX_POLICY_WEIGHT_DECAY = 1.0
# A lease must outlive a few heartbeats (the worker beats every lease/3) and an HTTP
# round trip; shorter leases expire before the work starts and workers steal members.
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 1.0, 7 * 24 * 3600.0
DEFAULT_LEASE_SECONDS = 600.0
MIN_ATTEMPTS, MAX_ATTEMPTS = 1, 100
DEFAULT_MAX_ATTEMPTS = 3
PQ_MIN, PQ_MAX = 0.0, 100.0
# A loss outside these is no measurement of a model: Eq. 1 divides by it.
MIN_LOSS, MAX_LOSS = 1e-30, 1e30
MAX_REASON_LENGTH = 2000
MAX_URI_LENGTH = 1024
MAX_METRICS_BYTES = 64 << 10  # a report's free-form metrics, as compact JSON
MAX_GAMMA = 1.0  # exclusive minimum 0
