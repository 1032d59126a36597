"""What every script shares: bad input is one line on stderr and exit code 2."""

import sys

import transformers

from distillation.errors import InputError


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
