"""The offline demo: distil a real teacher into a half-depth student on a CPU: `--help` lists the options; the code is distillation/cli/demo.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
