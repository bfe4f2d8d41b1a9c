"""Search strategies: the algorithms that choose a round's loss weights (pure, no I/O).

``base`` is the interface and the registry; ``ada_segment`` (the paper) and
``pbt`` (Baseline-P) are the strategies; ``policy``, ``rewards`` and
``ensemble`` are Ada-Segment's mathematics (Eq. 1-7).
"""
