"""The effectiveness benchmark: the paper's comparison tables at small scale (issue 7).

:mod:`.plan` (scales, rows, cells: pure), :mod:`.results` (per-cell result files and
the table: pure apart from reading/writing JSON), :mod:`.report` (README and plots),
:mod:`.cells` (what each cell runs; PBT is the service's ``pbt`` strategy, run like
an exploration), :mod:`.noise` (PQ noise between members),
``run.py`` (the command: scheduler, resume, progress).
"""
