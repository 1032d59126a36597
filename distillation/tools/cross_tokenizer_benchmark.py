"""What scripts/benchmark_cross_tokenizer.py runs: a clm teacher with another tokenizer.

The student has its own tokenizer (a byte-level BPE trained here on the training text) and a
random init (a small Llama, one per seed); the teacher (SmolLM2-135M-Instruct, from
scripts/benchmark_offline.py's runs/served_bench) reads the same text in its own tokens. For
every seed, train.py runs three ways at equal steps (the same data, epochs and batch):

- ce: no teacher, hard labels only (--alpha_ce 0 --alpha_task 1): what the teacher must beat;
- uld: the clm defaults (0.5 KD + 0.5 CE, T=2) with --cross_tokenizer uld (sorted probabilities);
- aligned: the same with --cross_tokenizer aligned (each teacher token to the student token that stands for it).

The students' tokens differ from the teacher's, so the comparable number is held-out bits per
byte (eval_bits_per_byte; the teacher's own is eval_teacher_bits_per_byte). The alignment runs
in the data loader (CrossTokenTexts.__getitem__), inside the step time; its share is measured
apart, by timing alignment.align over every training item (data/cross_text.py's dataset, built
as the objective builds it) per step of an epoch, against the runs' measured step time.
Quick mode: a tiny Llama teacher with a character BPE and tiny students, built here (seconds).
"""

import json
import math
import os
import shutil
import time

from distillation.tools.offline_benchmark import timed_script

METHODS = ("ce", "uld", "aligned")
EOS = "<|endoftext|>"


def student_tokenizer(text_file: str, folder: str, vocab_size: int):
    """A byte-level BPE trained on the training text (the student's own vocabulary, so it differs
    from the teacher's), EOS/unk/pad "<|endoftext|>", saved as a transformers tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        core = ByteLevelBPETokenizer()
        core.train([text_file], vocab_size=vocab_size, special_tokens=[EOS], show_progress=False)
        tok = PreTrainedTokenizerFast(tokenizer_object=core._tokenizer, eos_token=EOS, unk_token=EOS, pad_token=EOS)
        tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def student_model(folder: str, tokenizer, seed: int, size: dict) -> str:
    """A random-init Llama of `size` for this seed (made once; the seed picks the init, so each
    seed's three runs start from the same weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not os.path.isfile(os.path.join(folder, "config.json")):
        torch.manual_seed(seed)
        eos = tokenizer.eos_token_id
        config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, **size)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


# the real student: 4.3M parameters with a 3-4k vocabulary (hidden 256, 4 layers): trains from scratch at a few s a step
STUDENT = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
               max_position_embeddings=512)
QUICK_STUDENT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                     max_position_embeddings=64)


def quick_assets(out: str) -> dict:
    """A 2-layer Llama teacher with a character BPE over whole lines (no pre-tokenizer: its tokens
    cross the spaces, so many positions end apart from the student's) and lines of a tiny grammar."""
    import random

    import torch
    from tokenizers import Tokenizer, models, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    words = "the a this movie film plot actor is was good great bad dull fun".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(240)]
    files = {"train": _write(out, "train.txt", lines[:200]), "eval": _write(out, "eval.txt", lines[200:]),
             "teacher": os.path.join(out, "teacher")}
    if not os.path.isfile(os.path.join(files["teacher"], "config.json")):
        core = Tokenizer(models.BPE(unk_token="<unk>"))
        core.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=40, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
        tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=3)
        LlamaForCausalLM(config).save_pretrained(files["teacher"])
        tok.save_pretrained(files["teacher"])
    return files


def _write(out: str, name: str, lines: list) -> str:
    path = os.path.join(out, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def alignment_cost(train: str, student_tok, teacher: str, args) -> dict:
    """The alignment's cost per training step: the dataset built as the objective builds it
    (student blocks of --max_seq_length, the teacher cut at its positions), alignment.align timed
    over every item (best of --align_repeats passes: the machine is shared, the minimum is the
    cost), over the steps of one epoch. Also the share of exact pairs (CrossTokenTexts.exact_share)."""
    from transformers import AutoConfig, AutoTokenizer

    from distillation.data.alignment import align
    from distillation.data.cross_text import load_cross_text
    from distillation.models import max_positions

    teacher_max = max_positions(AutoConfig.from_pretrained(teacher)) or 1_000_000
    data = load_cross_text(train, "--data_file", student_tok, AutoTokenizer.from_pretrained(teacher), args.max_seq_length, teacher_max)
    passes = []
    for _ in range(args.align_repeats):
        start = time.perf_counter()
        for (_, s_ends), (_, t_ends) in zip(data.student, data.teacher):
            align(s_ends, t_ends)
        passes.append(time.perf_counter() - start)
    steps = math.ceil(len(data) / args.batch_size)
    return {"items": len(data), "steps_per_epoch": steps, "epoch_s": min(passes), "per_step_s": min(passes) / steps,
            "exact_share": data.exact_share(len(data)), "student_tokens": sum(data.lengths),
            "teacher_tokens": sum(len(ids) for ids, _ in data.teacher)}


def run_record(dump: str, seconds: float, batch_size: int) -> dict:
    """The numbers of a finished run: the final eval (summary.json: the last evaluation) and the
    training speed. summary.json's examples_per_s is over the logged training windows only (no
    evaluation, loading or saving), so batch / examples_per_s is the mean step time; every
    evaluation in metrics.jsonl is kept too (one per epoch)."""
    with open(os.path.join(dump, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(dump, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "eval_loss" in r]
    record = {"seconds": seconds, "train_s": summary["wall_time_s"], "steps": summary["step"],
              "step_s": batch_size / summary["examples_per_s"], "bits_per_byte": summary["eval_bits_per_byte"],
              "perplexity": summary["eval_perplexity"], "loss": summary["eval_loss"],
              "evals": [{k: r[k] for k in ("step", "eval_loss", "eval_bits_per_byte") if k in r} for r in evals]}
    if "eval_teacher_bits_per_byte" in summary:
        record["teacher_bits_per_byte"] = summary["eval_teacher_bits_per_byte"]
        record["teacher_perplexity"] = summary["eval_teacher_perplexity"]
    return record


def benchmark(args, assets: dict) -> dict:
    """Run what OUT/results.json lacks; returns it: {"settings", "alignment": alignment_cost,
    "runs": {"<ce|uld|aligned>-seed<N>": run_record}}. A run's final/ and checkpoint/ folders are
    deleted once its numbers are saved (the students are tiny, the numbers are the result)."""
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    results["settings"] = {k: getattr(args, k) for k in ("seeds", "threads", "student_vocab", "max_seq_length", "batch_size",
                                                         "n_epoch", "max_steps", "learning_rate", "quick", "extra")}
    results["settings"]["teacher"] = assets["teacher"]
    runs = results.setdefault("runs", {})

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=2)

    tok = student_tokenizer(assets["train"], os.path.join(args.out, "student-tokenizer"), args.student_vocab)
    results["student_vocab"] = len(tok)
    if "alignment" not in results:
        results["alignment"] = alignment_cost(assets["train"], tok, assets["teacher"], args)
        save()
    common = ["--objective", "clm", "--data_file", assets["train"], "--eval_file", assets["eval"], "--max_seq_length",
              args.max_seq_length, "--batch_size", args.batch_size, "--learning_rate", args.learning_rate, "--log_interval", 10,
              "--checkpoint_interval", 100_000, "--force"]
    common += ["--max_steps", args.max_steps] if args.max_steps else ["--n_epoch", args.n_epoch]
    flags = {"ce": ["--alpha_ce", 0, "--alpha_task", 1],
             "uld": ["--teacher_name", assets["teacher"], "--cross_tokenizer", "uld"],
             "aligned": ["--teacher_name", assets["teacher"], "--cross_tokenizer", "aligned"]}
    for seed in args.seeds:
        student = student_model(os.path.join(args.out, f"student-seed{seed}"), tok, seed, QUICK_STUDENT if args.quick else STUDENT)
        for method in METHODS:
            name = f"{method}-seed{seed}"
            if name in runs:
                continue
            dump = os.path.join(args.out, name)
            seconds = timed_script("train.py", *common, "--seed", seed, "--student_name", student, *flags[method], *args.extra,
                                   "--dump_path", dump, threads=args.threads)
            runs[name] = run_record(dump, seconds, args.batch_size)
            save()
            for folder in ("final", "checkpoint"):
                shutil.rmtree(os.path.join(dump, folder), ignore_errors=True)
    return results


def _mean(values: list):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _cell(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_table(args, results: dict) -> str:
    """Bits per byte per seed and on average (lower is better), the teacher's own, step times and
    the alignment's share of an aligned/uld step."""
    runs, align = results["runs"], results["alignment"]
    rows = ["| seed | ce bpb | uld bpb | aligned bpb | teacher bpb | ce step s | uld step s | aligned step s | alignment share |",
            "|---|---|---|---|---|---|---|---|---|"]
    seeds = [s for s in args.seeds if any(f"{m}-seed{s}" in runs for m in METHODS)]

    def get(method, seed, key):
        return runs.get(f"{method}-seed{seed}", {}).get(key)

    def row(label, value):
        bpb = [value(m, "bits_per_byte") for m in METHODS]
        teacher = value("aligned", "teacher_bits_per_byte") or value("uld", "teacher_bits_per_byte")
        steps = [value(m, "step_s") for m in METHODS]
        taught = _mean(steps[1:])
        share = None if taught is None else align["per_step_s"] / taught
        return (f"| {label} | " + " | ".join(_cell(b) for b in bpb) + f" | {_cell(teacher)} | "
                + " | ".join(_cell(s, 2) for s in steps) + f" | {'—' if share is None else f'{100 * share:.2g}%'} |")

    for seed in seeds:
        rows.append(row(seed, lambda m, k, s=seed: get(m, s, k)))
    if len(seeds) > 1:
        rows.append(row("mean", lambda m, k: _mean([get(m, s, k) for s in seeds])))
    walls = ", ".join(f"{name} {run['seconds']:.0f} s" for name, run in runs.items())
    notes = [f"student vocabulary {results['student_vocab']:,} (byte-level BPE on the training text); "
             f"{100 * align['exact_share']:.1f}% of the training targets' positions are exact pairs",
             f"alignment: {align['epoch_s'] * 1000:.1f} ms for {align['items']} items = {align['per_step_s'] * 1000:.2f} ms a step "
             f"({align['steps_per_epoch']} steps an epoch); share = that over the mean uld/aligned step time",
             f"wall times: {walls}"]
    return "\n".join(rows + [""] + notes)
