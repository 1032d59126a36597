"""Online KD against KD from the teacher-logits cache: `--help` lists the options; the code is distillation/cli/benchmark_offline.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.benchmark_offline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
