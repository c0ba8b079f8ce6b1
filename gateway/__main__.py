"""`python -m gateway` is the same as the `swgw` console script."""

from gateway.cli import main

raise SystemExit(main())
