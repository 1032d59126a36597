"""Several teachers against each alone: `--help` lists the options; the code is distillation/cli/benchmark_teachers.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.benchmark_teachers import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
