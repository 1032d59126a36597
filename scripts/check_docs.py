"""Check the docs against the code (flags and defaults): `--help` lists the options; the code is distillation/cli/check_docs.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.check_docs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
