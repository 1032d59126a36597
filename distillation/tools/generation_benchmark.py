"""What scripts/benchmark_generation.py runs: sequence-level KD data written by a local
`generate` against the same teacher on a vLLM server, and a student trained on each.

The task: continue a line of a play. Prompts are the first `--prompts` lines of the training
text (offline_benchmark.real_assets: SmolLM2-135M-Instruct, its half-depth student, the
Shakespeare lines), each an instruction record; the held-out set is the last `--eval_lines`
lines, each with the play's real next line as its output. Each writer (scripts/
generate_responses.py with --model, then with --model_url) answers every prompt once, seeded
alike; its wall time (a whole process: loading, the tokenizer check, the answers) is the time
per answer. Then for each writer's file and each seed: train.py (clm defaults: KD from the local
teacher beside CE on the answers) and the held-out perplexity of the real next lines. Each step
is a child process writing under --out; results.json keeps what finished, so a rerun skips it.
"""

import json
import os
import statistics

from distillation.tools.offline_benchmark import timed_script

INSTRUCTION = "Continue this line from a play."
WRITERS = ("local", "served")


def _records(path: str, first: int = None, last: int = None) -> list:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    return lines[:first] if first else lines[-last:]


def prompt_files(out: str, assets: dict, prompts: int, eval_lines: int) -> tuple:
    """(the prompts' jsonl, the held-out jsonl): records of a line to continue (and its next line)."""
    paths = os.path.join(out, "prompts.jsonl"), os.path.join(out, "heldout.jsonl")
    train, held = _records(assets["train"], first=prompts), _records(assets["eval"], last=eval_lines + 1)
    with open(paths[0], "w") as f:
        f.writelines(json.dumps({"instruction": INSTRUCTION, "input": line}) + "\n" for line in train)
    with open(paths[1], "w") as f:
        f.writelines(json.dumps({"instruction": INSTRUCTION, "input": a, "output": b}) + "\n" for a, b in zip(held, held[1:]))
    return paths


def benchmark(args, assets: dict) -> dict:
    """Run what results.json under args.out lacks; returns it: {"seconds": {writer: wall time},
    "answers": {writer: rows written}, "perplexity": {writer-seed<N>: held-out perplexity}}."""
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    seconds, answers, perplexity = (results.setdefault(key, {}) for key in ("seconds", "answers", "perplexity"))
    prompts, heldout = prompt_files(args.out, assets, args.prompts, args.eval_lines)
    template = ["--prompt_template", args.prompt_template] if args.prompt_template else []
    drawing = ["--data_file", prompts, "--max_new_tokens", args.max_new_tokens, "--temperature", args.temperature, "--seed", 0,
               *template]
    for writer in WRITERS:
        dump = os.path.join(args.out, f"{writer}.jsonl")
        if writer not in seconds:
            where = ["--model", assets["teacher"]] if writer == "local" else ["--model_url", args.teacher_url,
                                                                               "--tokenizer_name", assets["teacher"]]
            seconds[writer] = timed_script("generate_responses.py", *where, *drawing, "--dump_file", dump, "--force",
                                           threads=args.threads)
            with open(dump) as f:
                answers[writer] = sum(1 for _ in f)
        for seed in args.seeds:
            name = f"{writer}-seed{seed}"
            if name not in perplexity:
                run = os.path.join(args.out, f"student-{name}")
                timed_script("train.py", "--objective", "clm", "--teacher_name", assets["teacher"], "--student_name", assets["student"],
                             "--data_file", dump, "--eval_file", heldout, "--max_seq_length", args.max_seq_length, "--batch_size", 8,
                             "--learning_rate", args.learning_rate, "--n_epoch", args.epochs, "--seed", seed, "--dump_path", run,
                             "--force", *template, threads=args.threads)
                with open(os.path.join(run, "summary.json")) as f:
                    perplexity[name] = json.load(f)["eval_perplexity"]
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def format_table(args, results: dict) -> str:
    lines = ["| writer | s per 100 answers | student's held-out perplexity (per seed) |", "|---|---:|---:|"]
    for writer in WRITERS:
        per_100 = 100 * results["seconds"][writer] / results["answers"][writer]
        values = [results["perplexity"][f"{writer}-seed{s}"] for s in args.seeds]
        name = "local `generate` (--model)" if writer == "local" else "vLLM server (--model_url)"
        lines.append(f"| {name} | {per_100:.1f} | {statistics.mean(values):.2f} ({', '.join(f'{v:.2f}' for v in values)}) |")
    return "\n".join(lines)
