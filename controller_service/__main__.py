"""`python -m controller_service serve ...` is the same as the `adaseg` console script."""

from controller_service.cli import main

raise SystemExit(main())
