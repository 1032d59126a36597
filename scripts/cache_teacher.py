"""Cache a clm teacher's distributions for --teacher_logits: `--help` lists the options; the code is distillation/cli/cache_teacher.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.cache_teacher import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
