"""A model's responses to instruction prompts, for sequence-level KD: `--help` lists the options; the code is distillation/cli/generate_responses.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.generate_responses import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
