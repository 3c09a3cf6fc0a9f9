"""Ray Job entry point: `python -m jobs.measure --run RUN_DIR [--ray [ADDRESS]] [...]`
(the same options as `adaptsym measure`). Inside a Ray job, `--ray auto` joins the job's cluster."""

import sys

from jobs.cli import main as cli_main


def main(argv=None) -> int:
    return cli_main(["measure", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
