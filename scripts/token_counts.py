"""Count the token ids of a binarized dataset, for mlm's masking probabilities: `--help` lists the options; the code is distillation/cli/token_counts.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.token_counts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
