"""The `adaptsym` command (and `python -m adaptsym_cli`): runs `jobs/cli.py` of the checkout this
file lives in.

Only `adaptsym` is installed as a package. The `jobs` and `services` layers are not: top-level
packages with those names would collide with other projects in a shared environment. They run
from the repository, as Ray Jobs runs them (`python -m jobs.<name>` in the checkout, or in the
working directory a Ray Job uploads); this command puts the checkout on `sys.path` first.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    root = Path(__file__).resolve().parent
    if not (root / "jobs" / "cli.py").is_file():
        sys.stderr.write(f"adaptsym: no jobs/ beside {__file__}: install adaptsym from a checkout "
                         "(`pip install -e .` in the repository) and run it there\n")
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from jobs.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
