"""`python -m adaptsym`: the same command line as the `adaptsym` script (jobs/cli.py)."""

import sys

from jobs.cli import main

sys.exit(main())
