"""Ada-Segment trainer: commands (``cli``), the training loop (``engine``), loss weighting
(``weighting``), PQ (``eval``), worker and epoch jobs (``jobs``), ``data`` and ``models``."""
