"""A teacher with another tokenizer: ce, uld and aligned: `--help` lists the options; the code is distillation/cli/benchmark_cross_tokenizer.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.benchmark_cross_tokenizer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
