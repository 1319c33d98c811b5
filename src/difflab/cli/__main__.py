"""`python -m difflab.cli ARGS` is `difflab ARGS`."""

from difflab.cli import main

raise SystemExit(main())
