"""The values the search options take, stated once (no imports: the API contract, the
maths modules and the strategies all read them here)."""

from __future__ import annotations

# name -> module defining the strategy (imported on first use; see search.base)
STRATEGY_MODULES: dict[str, str] = {
    "ada-segment": "controller_service.search.ada_segment",
    "pbt": "controller_service.search.pbt",
}
DEFAULT_STRATEGY = "ada-segment"
# The paper's population m and schedule: T rounds of one epoch each, E = T epochs for a transfer
DEFAULT_POPULATION = 8
DEFAULT_ROUNDS = 12
SIGMA_MODES = ("absolute", "relative", "log")  # Eq. 2: the paper, ours, multiplicative
REWARD_TERMS = ("local+imp", "local", "rank")  # Eq. 5, Eq. 3 only, centred ranks
# "free": the policy's weights as drawn (the paper); "loss-sum": each weight vector scaled so
# that sum_i lambda_i l_i = sum_i l_i on the policy's input losses (ours): only ratios are
# searched, never the overall scale, which acts as the shared layers' learning rate
WEIGHT_SCALES = ("free", "loss-sum")
# Transfer weights (Eq. 7 and Table 2): dynamic modes give new weights every epoch
DYNAMIC_TRANSFER_MODES = ("ensemble", "final")
STATIC_TRANSFER_MODES = ("static-pred", "static-final")
TRANSFER_MODES = DYNAMIC_TRANSFER_MODES + STATIC_TRANSFER_MODES
DEFAULT_TRANSFER_MODE = "ensemble"  # the paper's Comb-dy
DEFAULT_GAMMA = 0.9  # Eq. 7's decay over the policy snapshots
