"""Evaluation, apart from training: the PQ evaluator (in memory and on files, exactly
panopticapi's numbers) and the PQ of a model on a split."""
