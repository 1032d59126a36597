"""A clm teacher with another tokenizer: a small student with its own vocabulary trained alone
(ce) against the same student distilled from SmolLM2-135M-Instruct by each cross-tokenizer loss
(--cross_tokenizer uld, aligned), at equal steps.

    OMP_NUM_THREADS=1 python scripts/benchmark_cross_tokenizer.py --out runs/cross_tokenizer         # seeds 5 6 7
    python scripts/benchmark_cross_tokenizer.py --out runs/cross_tokenizer_quick --quick             # tiny models, seconds

The student's tokenizer is a byte-level BPE trained on the training text (--student_vocab), the
student a random-init 4.3M-parameter Llama per seed; the teacher and the Shakespeare files are
scripts/benchmark_offline.py's (runs/served_bench). Prints held-out bits per byte (the number
that compares models with different tokens) per seed and on average, the teacher's own, the
mean step time of each method and the alignment's share of a step, and the share of positions
whose tokens end at the same character in both. Every finished run is kept in OUT/results.json,
so rerunning the command finishes an interrupted benchmark.
distillation/tools/cross_tokenizer_benchmark.py says what runs.
"""

import argparse
import os
import shlex

from distillation.cli import ArgumentParser, command, require_positive
from distillation.tools.cross_tokenizer_benchmark import benchmark, format_table, quick_assets

BENCH = os.path.join("runs", "served_bench")  # scripts/benchmark_offline.py --out runs/served_bench wrote these


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Folder for the student's tokenizer and inits, the runs and results.json.")
    p.add_argument("--quick", action="store_true", help="A tiny teacher, students and texts built here (seconds, nothing fetched).")
    p.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7],
                   help="Student seeds: each seeds one init and one run per method (ce, uld, aligned).")
    p.add_argument("--teacher", default=os.path.join(BENCH, "smollm2-135m-instruct"), help="The teacher (its own tokenizer).")
    p.add_argument("--train", default=os.path.join(BENCH, "train.txt"), help="Training text (.txt).")
    p.add_argument("--eval", default=os.path.join(BENCH, "eval.txt"), help="Held-out text (.txt).")
    p.add_argument("--student_vocab", type=int, default=4096, help="Vocabulary size asked of the student's byte-level BPE.")
    p.add_argument("--max_seq_length", type=int, default=128, help="Student tokens a block.")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--n_epoch", type=int, default=2, help="Epochs of every run (the same steps for all three methods).")
    p.add_argument("--max_steps", type=int, default=0, help="Steps of every run instead of --n_epoch (0: --n_epoch decides).")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="The student's learning rate (a small student from scratch).")
    p.add_argument("--align_repeats", type=int, default=5, help="Timed passes of the alignment over the training items (the best counts).")
    p.add_argument("--extra", default="", help="More train.py flags for every run, e.g. --extra='--temperature 1'.")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run (default: this process's environment).")
    args = p.parse_args(argv)
    require_positive(args, "student_vocab", "max_seq_length", "batch_size", "n_epoch", "align_repeats")
    if args.max_steps < 0:
        p.error(f"--max_steps must be >= 0 (got {args.max_steps})")
    if args.threads is not None:
        require_positive(args, "threads")
    args.extra = shlex.split(args.extra)
    if args.quick:  # the tiny grammar: a byte-level BPE needs its 256 bytes, a few merges more; short blocks, a few steps
        args.student_vocab, args.max_seq_length = min(args.student_vocab, 300), min(args.max_seq_length, 32)
        args.max_steps = args.max_steps or 4
    return args


def _main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.quick:
        assets = quick_assets(args.out)
    else:
        assets = {"teacher": args.teacher, "train": args.train, "eval": args.eval}
    print(format_table(args, benchmark(args, assets)))


main = command(_main)
