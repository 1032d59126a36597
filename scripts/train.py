"""Distil a teacher into a student: `--help` lists the options; the code is distillation/cli/train.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
