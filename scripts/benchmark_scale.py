"""Per-rank memory and throughput of ddp and fsdp at BERT-base scale: `--help` lists the options; the code is distillation/cli/benchmark_scale.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.benchmark_scale import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
