"""Tokenise a text file, one sequence per line, for mlm/clm training: `--help` lists the options; the code is distillation/cli/binarized_data.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.binarized_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
