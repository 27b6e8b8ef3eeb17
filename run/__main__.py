"""`python -m run` is the same as the `gaugeflow` command."""
from .cli import main

raise SystemExit(main())
