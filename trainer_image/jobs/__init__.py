"""The jobs a trainer process runs: a *member* job (``adaseg worker``: lease a member, train
one interval, report, repeat) and *epoch* jobs (``adaseg transfer`` and ``adaseg train``: a
fresh model for E epochs), over what they share (set-up, stop flag, store retries)."""
