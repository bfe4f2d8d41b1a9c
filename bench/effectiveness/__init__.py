"""The effectiveness benchmark: the paper's comparison tables at small scale (issue 7).

:mod:`.plan` (scales, rows, cells: pure), :mod:`.results` (per-cell result files and
the table: pure apart from reading/writing JSON), :mod:`.report` (README and plots),
:mod:`.pbt` (the PBT-like baseline, Baseline-P), :mod:`.cells` (what each cell runs),
``run.py`` (the command: scheduler, resume, progress).
"""
