"""Sequence-level KD data from a local `generate` against the same teacher on a vLLM server.

    python -m vllm.entrypoints.openai.api_server --model runs/generation/smollm2-135m-instruct --port 8000 --dtype float32
    python scripts/benchmark_generation.py --out runs/generation --teacher_url http://127.0.0.1:8000

SmolLM2-135M-Instruct (made a folder under --out by the first command's assets: run this script
once without the server to fetch and convert them, it stops where it needs the server) continues
lines of Shakespeare: both writers answer the same prompts, seeded alike; then its half-depth
student trains on each writer's answers. Prints a markdown table: seconds per 100 answers and
the students' held-out perplexity of the plays' real next lines; OUT/results.json keeps every
finished step, so rerunning the command finishes an interrupted benchmark.
distillation/tools/generation_benchmark.py says what runs.
"""

import argparse
import os

from distillation.cli import ArgumentParser, command, require_positive
from distillation.errors import InputError
from distillation.tools.demo import DEFAULT_CACHE
from distillation.tools.generation_benchmark import benchmark, format_table
from distillation.tools.offline_benchmark import real_assets


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Folder for the assets, answers, students and results.json.")
    p.add_argument("--teacher_url", help="The vLLM server of the teacher (the folder under --out, served).")
    p.add_argument("--prompts", type=int, default=100, help="Prompts answered by each writer: the first training lines.")
    p.add_argument("--eval_lines", type=int, default=200, help="Held-out lines to continue: the last of the plays.")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7, help="Of both writers' sampling.")
    p.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7], help="Of the students' runs.")
    p.add_argument("--epochs", type=int, default=3, help="Of each student's run over its writer's answers.")
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--prompt_template", help="As train.py's, for both writers and the students (default: the chat template).")
    p.add_argument("--max_seq_length", type=int, default=128, help="Of the students' runs.")
    p.add_argument("--assets", nargs=4, metavar=("TEACHER", "STUDENT", "TRAIN_TEXT", "EVAL_TEXT"),
                   help="Other folders and text files than SmolLM2 and the plays (the tests' tiny pair).")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS of each step.")
    p.add_argument("--cache_dir", default=DEFAULT_CACHE, help="Where the fetched assets are kept (the demo's cache).")
    args = p.parse_args(argv)
    require_positive(args, "prompts", "eval_lines", "max_new_tokens", "epochs", "max_seq_length", "threads")
    return args


def _main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.assets:
        assets = dict(zip(("teacher", "student", "train", "eval"), args.assets))
    else:
        assets = real_assets(args.out, args.cache_dir, 3000, args.eval_lines + 1)
    if not args.teacher_url:
        raise InputError(f"--teacher_url: serve the teacher first, e.g. `python -m vllm.entrypoints.openai.api_server --model "
                         f"{assets['teacher']} --port 8000 --dtype float32`, then give --teacher_url http://127.0.0.1:8000")
    print(format_table(args, benchmark(args, assets)))


main = command(_main)
