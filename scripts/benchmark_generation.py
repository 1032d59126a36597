"""Sequence-level KD data from a local generate against a vLLM server: `--help` lists the options; the code is distillation/cli/benchmark_generation.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.benchmark_generation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
