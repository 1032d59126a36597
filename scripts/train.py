"""Distil a teacher into a student: `python scripts/train.py [--config FILE.json] [--flag value ...]`.

Multi-GPU: `torchrun --nproc_per_node=8 scripts/train.py ...` (same flags). Every option is
described by `--help`; DESIGN §5 is the contract. Bad input: one line on stderr, exit code 2.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli import main_guard  # noqa: E402
from distillation.config import DistillConfig  # noqa: E402
from distillation.pipeline import run  # noqa: E402


def main(argv=None):
    summary = run(DistillConfig.from_cli(argv))
    if summary.get("interrupted"):
        return 130


if __name__ == "__main__":
    sys.exit(main_guard(main))
