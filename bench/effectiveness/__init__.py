"""The effectiveness benchmark: the paper's comparison tables (issues 7, 12 and 14).

:mod:`.plan` (scales, rows, cells: pure), :mod:`.protocol` (the held-out protocol's
freeze: settings hashes, the committed ``frozen/`` file), :mod:`.results` (per-cell result
files, the tables' statistics: pure apart from reading/writing JSON), :mod:`.report` (the
small scale's README), :mod:`.held_out` (a held-out scale's README), :mod:`.figures` (their
plots), :mod:`.cells` (what each cell runs; PBT is the service's ``pbt`` strategy, run like
an exploration), :mod:`.noise` (PQ noise between members), ``run.py`` (the command:
scheduler, resume, progress).
"""
