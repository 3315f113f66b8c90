"""``python -m selfsup``: the command line."""
from selfsup.cli import main

raise SystemExit(main())
