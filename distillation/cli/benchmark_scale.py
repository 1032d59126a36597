"""Per-rank memory and throughput of --strategy ddp and fsdp at real model sizes.

    python scripts/benchmark_scale.py --out runs/scale           # BERT-base -> DistilBERT (MLM): ddp, fsdp x 1, 2 processes x seq 128, 512
    python scripts/benchmark_scale.py --out runs/scale --model llama-1b --seq 256 --tokens_per_step 256
    python scripts/benchmark_scale.py --out runs/scale --model llama-1b --strategies fsdp --processes 2 --loading sharded whole
    python scripts/benchmark_scale.py --plan_only --teacher_config training_configs/models/llama-3.1-8b.json \
        --student_config training_configs/models/llama-3.2-1b.json --processes 8 --seq 4096 --tokens_per_step 4096 \
        --precision bf16 --columns 128256                # the memory plan only: nothing built but on the meta device

Models are built from their configs (nothing downloaded); distillation/tools/scale_benchmark.py
says what is measured and how. Writes results-MODEL.json and results-MODEL.md under --out (a later invocation with the same --out
adds its configurations to them).
"""

import argparse
import json
import os
import platform

from distillation.cli import ArgumentParser, command, require_positive
from distillation.config import PRECISIONS
from distillation.errors import InputError
from distillation.models import load_config
from distillation.tools.scale_benchmark import MODELS, format_table, plan_table, prepare, run_config


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="Folder for the models, data, logs and results (required unless --plan_only).")
    p.add_argument("--model", default="bert-base", choices=tuple(MODELS), help="bert-base: 110M -> 66M, MLM; llama-1b: 1.1B -> "
                   "0.6B (half depth), clm.")
    p.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"], choices=("ddp", "fsdp"))
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="torchrun processes (CPU, gloo).")
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512], help="Sequence lengths (tokens per example).")
    p.add_argument("--tokens_per_step", type=int, default=1024, help="Tokens per process per step: batch = this / seq.")
    p.add_argument("--steps", type=int, default=3, help="Timed steps after one warm-up.")
    p.add_argument("--saved_dtype", default="fp32", choices=("fp32", "bf16"), help="The dtype the models are saved in (released "
                   "checkpoints are mostly bf16: the fp32 student is then converted when it loads).")
    p.add_argument("--loading", nargs="+", default=["sharded"], choices=("sharded", "whole"),
                   help="fsdp on several processes: read the models shard by shard (the default) and/or load them whole first "
                        "(--no-sharded_loading), to compare.")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="Cores shared by the processes (threads = cores / processes).")
    plan = p.add_argument_group("--plan_only: the memory plan of two configs, per process (distillation/memory_plan.py)")
    plan.add_argument("--plan_only", action="store_true", help="Print the plan of --teacher_config -> --student_config for each of "
                      "--strategies, --processes and --seq (batch = --tokens_per_step / seq); run nothing (--out, --model, "
                      "--steps and --cores unused).")
    plan.add_argument("--teacher_config", help="A config.json of the teacher (e.g. training_configs/models/llama-3.1-8b.json).")
    plan.add_argument("--student_config", help="A config.json of the student.")
    plan.add_argument("--precision", default="fp32", choices=PRECISIONS, help="The run's --precision.")
    plan.add_argument("--teacher_dtype", choices=PRECISIONS, help="The run's --teacher_dtype (default: --precision's).")
    plan.add_argument("--loss_chunk_rows", type=int, default=0, help="The run's --loss_chunk_rows.")
    plan.add_argument("--replicate_teacher", action="store_true", help="fsdp: the teacher whole on each process.")
    plan.add_argument("--columns", type=int, help="Logit columns distilled: len(tokenizer) (default: the smaller vocab_size).")
    args = p.parse_args(argv)
    require_positive(args, "tokens_per_step", "steps", "cores")
    for flag in ("processes", "seq"):
        if min(getattr(args, flag)) < 1:
            raise InputError(f"--{flag} must be >= 1 (got {min(getattr(args, flag))})")
    if args.plan_only:
        if not (args.teacher_config and args.student_config):
            raise InputError("--plan_only needs --teacher_config and --student_config (config.json files)")
        for flag in ("teacher_config", "student_config"):
            if not os.path.isfile(getattr(args, flag)):
                raise InputError(f"--{flag}: no such file '{getattr(args, flag)}'")
        # read once, for plan_table too (exit 2 naming the flag on a bad file)
        args.configs = [load_config(getattr(args, flag), f"--{flag}") for flag in ("teacher_config", "student_config")]
        vocab = [config.vocab_size for config in args.configs]
        args.columns = args.columns or min(vocab)
        if not 1 <= args.columns <= min(vocab):
            raise InputError(f"--columns {args.columns}: must be between 1 and the smaller vocab_size ({min(vocab)})")
        if args.loss_chunk_rows < 0:
            raise InputError(f"--loss_chunk_rows must be >= 0 (got {args.loss_chunk_rows})")
        if args.precision == "fp16" and "fsdp" in args.strategies:
            raise InputError("--precision fp16: not with --strategies fsdp (train.py refuses it: use bf16)")
    elif not args.out:
        raise InputError("--out is required (or --plan_only)")
    return args


def _main(argv=None):
    args = parse_args(argv)
    if args.plan_only:
        print(plan_table(args))
        return
    os.makedirs(args.out, exist_ok=True)
    results = []
    for seq in args.seq:
        paths = prepare(args.out, args.model, seq, (args.steps + 1) * max(args.processes) * max(1, args.tokens_per_step // seq), args.saved_dtype)
        for processes in args.processes:
            for strategy in args.strategies:
                shards = strategy == "fsdp" and processes > 1
                for loading in args.loading if shards else ["whole"]:
                    result = run_config(paths, args.out, args.model, strategy, processes, seq, max(1, args.tokens_per_step // seq),
                                        args.steps, max(1, args.cores // processes), sharded_loading=loading == "sharded")
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
