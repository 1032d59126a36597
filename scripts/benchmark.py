"""Seed 001's Trainer-subclass recipe against our Distiller, in one invocation: `--help` lists the options; the code is distillation/cli/benchmark.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
