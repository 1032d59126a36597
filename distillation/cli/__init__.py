"""The command-line tools (`scripts/*.py`, and the `distil-*` console commands of setup.py).

What they share: bad input is one line on stderr and exit code 2, a stopped run exit code 1.
"""

import argparse
import os
import sys

import transformers

from distillation.distributed import exit_process
from distillation.errors import InputError, TrainingStopped


def main_guard(main, *args) -> int:
    """Run `main`; turn an InputError into `error: <message>` and exit code 2."""
    # Our own tqdm bar shows progress; the library's loading bars and warnings would bury
    # both it and the one-line error of bad input.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        return main(*args) or 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def command(run):
    """`run(argv)` as an entry point: `main(argv=None)` returns the exit code instead of raising."""

    def main(argv=None) -> int:
        code = main_guard(run, argv)
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # a torchrun worker: see distributed.exit_process
            exit_process(code)
        return code

    return main


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as an InputError (one line, exit 2), not a usage dump.
    No abbreviated flags: `--learning_rat` taken as `--learning_rate` would hide a typo, and a
    flag added later could make an abbreviation that worked ambiguous (distil() takes whole names only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise InputError(message.removeprefix("argument "))


def require_positive(args, *names) -> None:
    """Exit 2 naming the first of `names` (integer options) below 1."""
    for name in names:
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be >= 1 (got {getattr(args, name)})")
