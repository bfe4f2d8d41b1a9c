"""The training engine: one interval loop, the hooks around it, the optimizer's parameter groups
and schedule, and the checkpoint format. It knows models, weighting strategies and batches;
it knows nothing of controllers, leases, stop flags or epochs (``trainer_image.jobs`` does)."""
