"""`python -m castml_cli ...` runs the `castml` command line (same as the console script)."""

import sys

from .main import main

sys.exit(main())
