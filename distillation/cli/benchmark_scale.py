"""Per-rank memory and throughput of --strategy ddp and fsdp at real model sizes.

    python scripts/benchmark_scale.py --out runs/scale           # BERT-base -> DistilBERT (MLM): ddp, fsdp x 1, 2 processes x seq 128, 512
    python scripts/benchmark_scale.py --out runs/scale --model llama-1b --seq 256 --tokens_per_step 256

Models are built from their configs (nothing downloaded); distillation/tools/scale_benchmark.py
says what is measured and how. Writes results-MODEL.json and results-MODEL.md under --out (a later invocation with the same --out
adds its configurations to them).
"""

import argparse
import json
import os
import platform

from distillation.cli import ArgumentParser, command, require_positive
from distillation.tools.scale_benchmark import MODELS, format_table, prepare, run_config


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Folder for the models, data, logs and results.")
    p.add_argument("--model", default="bert-base", choices=tuple(MODELS), help="bert-base: 110M -> 66M, MLM; llama-1b: 1.1B -> "
                   "0.6B (half depth), clm.")
    p.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"], choices=("ddp", "fsdp"))
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="torchrun processes (CPU, gloo).")
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512], help="Sequence lengths (tokens per example).")
    p.add_argument("--tokens_per_step", type=int, default=1024, help="Tokens per process per step: batch = this / seq.")
    p.add_argument("--steps", type=int, default=3, help="Timed steps after one warm-up.")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="Cores shared by the processes (threads = cores / processes).")
    args = p.parse_args(argv)
    require_positive(args, "tokens_per_step", "steps", "cores")
    return args


def _main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = []
    for seq in args.seq:
        paths = prepare(args.out, args.model, seq, n_examples=(args.steps + 1) * max(args.processes) * max(1, args.tokens_per_step // seq))
        for processes in args.processes:
            for strategy in args.strategies:
                result = run_config(paths, args.out, args.model, strategy, processes, seq, max(1, args.tokens_per_step // seq), args.steps,
                                    max(1, args.cores // processes))
                print(json.dumps(result), flush=True)
                results.append(result)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {args.cores} cores, CPU fp32, gloo",
            "note": f"{args.tokens_per_step} tokens per process per step, {args.steps} timed steps after a warm-up"}
    path = os.path.join(args.out, f"results-{args.model}.json")
    if os.path.isfile(path):  # earlier invocations' other configurations stay in the table
        with open(path) as f:
            fresh = {r["name"] for r in results}
            results = [r for r in json.load(f)["results"] if r["name"] not in fresh] + results
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    table = format_table(results, meta)
    with open(os.path.join(args.out, f"results-{args.model}.md"), "w") as f:
        f.write(table + "\n")
    print(table)


main = command(_main)
