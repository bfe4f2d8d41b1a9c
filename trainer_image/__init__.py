"""Ada-Segment trainer: commands (``cli``), the training loop (``engine``), loss weighting
(``weighting``), PQ (``eval``), worker and epoch jobs (``jobs``), ``data`` and ``models``."""

# What every launcher trains when no model is named (`adaseg models` lists the others); stated
# here, free of torch, so the demo, the pipelines and the benchmark read it without the models.
DEFAULT_MODEL = "panoptic_deeplab"
