"""Kubeflow pipelines of Ada-Segment: search, transfer, and both combined.

Modules: :mod:`pipelines.components` (the lightweight KFP components),
:mod:`pipelines.search`, :mod:`pipelines.transfer`, :mod:`pipelines.combined`
(the pipelines), :mod:`pipelines.steps` (what a task does inside its container,
plain Python), :mod:`pipelines.report` (run summaries as metrics, Markdown and
HTML), :mod:`pipelines.cli` (``adaseg pipeline compile|submit``).

This package imports nothing heavy on purpose: ``steps`` and ``report`` run in
the trainer container, where only the components' own imports should cost.
"""
