"""Peak memory and time of the clm token losses, dense vs chunked: `--help` lists the options; the code is distillation/cli/benchmark_losses.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.benchmark_losses import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
