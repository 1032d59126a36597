"""A student from some of a teacher's layers, keeping the teacher's class and head: `--help` lists the options; the code is distillation/cli/extract.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.extract import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
