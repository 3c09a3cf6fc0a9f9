"""Ray Job entry point: `python -m jobs.train --config C [--out runs] [--model M] [--deepspeed]`.

Plain torch by default (the same as `adaptsym train`); `--deepspeed` trains with DeepSpeed ZeRO
through Ray Train (`jobs/deepspeed_train.py`), writing the same self-describing checkpoints.
"""

import sys

from jobs.cli import main as cli_main


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--deepspeed" in argv:
        argv.remove("--deepspeed")
        from jobs.deepspeed_train import main as ds_main

        return ds_main(argv)
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
