"""`python -m fovea.cli`: the same as the `fovea` console script."""

from . import main

raise SystemExit(main())
