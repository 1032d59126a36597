"""Peak memory and time of the clm token losses, dense against chunked (--loss_chunk_rows).

    python scripts/benchmark_losses.py                                 # 128k vocabulary, 4 x 512 tokens
    python scripts/benchmark_losses.py --chunk_rows 256 1024 --divergence jsd

Models are Llama configs built here (nothing downloaded); distillation/tools/loss_benchmark.py
says what is measured and how.
"""

import argparse

from distillation.cli import ArgumentParser, command, require_positive
from distillation.errors import InputError
from distillation.losses import DIVERGENCES
from distillation.tools.loss_benchmark import benchmark, format_results


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab_size", type=int, default=128256, help="Vocabulary (default: Llama 3's 128,256).")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--student_hidden", type=int, default=256)
    p.add_argument("--teacher_hidden", type=int, default=512)
    p.add_argument("--chunk_rows", type=int, nargs="+", default=[256, 1024], help="Chunk sizes to compare with dense.")
    p.add_argument("--divergence", default="forward_kl", choices=tuple(DIVERGENCES))
    p.add_argument("--repeats", type=int, default=3, help="Timed passes after one warm-up (the median is shown).")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each measuring process.")
    args = p.parse_args(argv)
    require_positive(args, "vocab_size", "batch_size", "seq_len", "student_hidden", "teacher_hidden", "repeats", "threads")
    if min(args.chunk_rows) < 1:
        raise InputError(f"--chunk_rows must be >= 1 (got {min(args.chunk_rows)})")
    return args


def _main(argv=None):
    args = parse_args(argv)
    print(format_results(args, benchmark(args)))


main = command(_main)
