"""The trainer's commands (``adaseg worker|transfer|train|data|pq``), one module each with
``add_arguments(parser)`` and ``main(args) -> int``, over one shared base (``base.py``:
flags, exit codes, logging). ``controller_service/cli.py`` dispatches to them."""
