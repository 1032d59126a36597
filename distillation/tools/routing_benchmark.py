"""What scripts/benchmark_teachers.py --mode routing runs (the ensemble mode: teachers_benchmark.py).

Routing mode (clm, --mode routing): two domain teachers, each a plain fine-tune (train.py with no
teacher, hard labels only) of SmolLM2-135M-Instruct (scripts/benchmark_offline.py's conversion)
on one domain's text records: Shakespeare (groups of consecutive lines of the plays) and Python
(runs of consecutive non-blank lines of the standard library's modules, one run per module in
turn; every fifth module held out). The half-depth student (its every other layer) is distilled
for one epoch on both domains' records, shuffled, from the teachers routed by the records'
"domain" (--teacher_column), from each teacher alone and from their equal mix; the result is the
held-out perplexity per domain (and the base model's and each teacher's). The student starts
healed (--heal_epochs): the half-depth cut, fine-tuned first with hard labels only on the first
--heal_records training records of each domain (more than the distillation's --records: on
those alone it overfits before it heals), made once and shared by every run. Quick mode: the tiny
Llama pair of offline_benchmark.quick_assets, and two word orders of its grammar as the domains.
"""

import json
import os
import random

import torch

from distillation.tools.offline_benchmark import timed_script
from distillation.tools.teachers_benchmark import cell

DOMAINS = ("shakespeare", "python")


def routing_assets(out: str, base: str, student: str, shakespeare_train: str, shakespeare_eval: str, args) -> dict:
    """Text records {"text", "domain"} of both domains under out/data (made once): Shakespeare
    as groups of --record_lines consecutive lines of the plays' train and held-out files, Python
    as runs of --record_lines consecutive non-blank lines of the standard library's top-level
    modules (every fifth module, by name, held out)."""
    import sysconfig

    def groups(lines, n):
        lines = [line.rstrip() for line in lines if line.strip()]
        return ["\n".join(lines[i : i + n]) for i in range(0, len(lines) - n + 1, n)]

    def read(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readlines()

    stdlib = sysconfig.get_paths()["stdlib"]
    python = {"train": [], "eval": []}
    for i, name in enumerate(sorted(p for p in os.listdir(stdlib) if p.endswith(".py"))):
        python["eval" if i % 5 == 4 else "train"].append(groups(read(os.path.join(stdlib, name)), args.record_lines))
    texts = {
        ("shakespeare", "train"): groups(read(shakespeare_train), args.record_lines),
        ("shakespeare", "eval"): groups(read(shakespeare_eval), args.record_lines),
        # one run of lines from each module in turn, so that no module fills the set
        ("python", "train"): _interleave(python["train"]), ("python", "eval"): _interleave(python["eval"]),
    }
    return _routing_files(out, base, student, texts, args)


def quick_routing_assets(out: str, args) -> dict:
    """offline_benchmark's tiny Llama pair, and two 'domains' of its tiny grammar (word orders)."""
    from distillation.tools.offline_benchmark import quick_assets

    tiny = quick_assets(out)
    lines = {}
    for split in ("train", "eval"):
        with open(tiny[split]) as f:
            lines[split] = [line.strip() for line in f if line.strip()]
    texts = {}
    for split in ("train", "eval"):
        texts[("shakespeare", split)] = lines[split]
        texts[("python", split)] = [" ".join(sorted(line.split())) for line in lines[split]]
    return _routing_files(out, tiny["teacher"], tiny["student"], texts, args)


def _interleave(lists: list) -> list:
    out = []
    for i in range(max(map(len, lists), default=0)):
        out += [items[i] for items in lists if i < len(items)]
    return out


def _routing_files(out: str, base: str, student: str, texts: dict, args) -> dict:
    data = os.path.join(out, "data")
    files = {"base": base, "student": student, "data": data}
    for domain in DOMAINS:
        files[f"{domain}-train"] = os.path.join(data, f"{domain}-train.jsonl")
        files[f"{domain}-eval"] = os.path.join(data, f"{domain}-eval.jsonl")
    files["train"] = os.path.join(data, "mixed-train.jsonl")
    from distillation.errors import InputError

    # the student init's fine-tune (--heal_epochs): the first --heal_records of each domain's training text
    files["heal"] = os.path.join(data, f"heal-train-{args.heal_records}.jsonl")
    if args.heal_epochs and not os.path.isfile(files["heal"]):
        heal = []
        for domain in DOMAINS:
            got = texts[(domain, "train")][: args.heal_records]
            if len(got) < args.heal_records:
                raise InputError(f"--heal_records {args.heal_records}: {domain} has {len(got)} train records")
            heal += [{"text": t, "domain": domain} for t in got]
        random.Random(0).shuffle(heal)
        os.makedirs(data, exist_ok=True)
        _write_jsonl(files["heal"], heal)
    if os.path.isfile(files["train"]):
        return files
    os.makedirs(data, exist_ok=True)
    mixed = []
    for domain in DOMAINS:
        for split, n in (("train", args.records), ("eval", args.eval_records)):
            got = texts[(domain, split)][:n]
            if len(got) < n:
                raise InputError(f"--{'records' if split == 'train' else 'eval_records'} {n}: {domain} has {len(got)} {split} records")
            rows = [{"text": t, "domain": domain} for t in got]
            _write_jsonl(files[f"{domain}-{split}"], rows)
            mixed += rows if split == "train" else []
    random.Random(0).shuffle(mixed)
    _write_jsonl(files["train"], mixed)
    return files


def _write_jsonl(path: str, rows: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def routing_benchmark(args, assets: dict) -> dict:
    """Run what results.json under args.out lacks; returns it:
    {"teachers": {"<base> | teacher-<domain>": {seconds, perplexity: {domain: ppl}}},
     "students": {"student": {perplexity}, "student-healed": {seconds, perplexity}},
     "runs": {"<routed | mix | teacher-<domain>>-seed<N>": {perplexity: {domain: ppl}, seconds, train_s, steps, student, taught}},
     "settings": {...}}. The base model's perplexities are the teachers' starting point; the
    healed student's (--heal_epochs) are every run's starting point."""
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    results["settings"] = {k: getattr(args, k) for k in ("seeds", "threads", "records", "eval_records", "record_lines", "max_seq_length",
                                                         "batch_size", "teacher_epochs", "teacher_lr", "heal_records", "heal_epochs", "heal_lr",
                                                         "learning_rate", "quick")}
    teachers, runs = results.setdefault("teachers", {}), results.setdefault("runs", {})
    students = results.setdefault("students", {})

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=2)

    common = ["--objective", "clm", "--max_seq_length", args.max_seq_length, "--batch_size", args.batch_size, "--log_interval", 10,
              "--checkpoint_interval", 100_000, "--force"]
    evals = {d: assets[f"{d}-eval"] for d in DOMAINS}
    if "base" not in teachers:
        teachers["base"] = {"perplexity": perplexities(assets["base"], evals, args.max_seq_length)}
        save()
    folders = {}
    for domain in DOMAINS:
        name = f"teacher-{domain}"
        folders[domain] = os.path.join(args.out, name, "final")
        if name in teachers and os.path.isdir(folders[domain]):
            continue
        # a plain fine-tune of the base model on its domain: no teacher, hard labels only
        seconds = timed_script("train.py", *common, "--seed", args.teacher_seed, "--student_name", assets["base"], "--data_file",
                               assets[f"{domain}-train"], "--alpha_ce", 0, "--alpha_task", 1, "--n_epoch", args.teacher_epochs,
                               "--learning_rate", args.teacher_lr, "--dump_path", os.path.dirname(folders[domain]), threads=args.threads)
        teachers[name] = {"seconds": seconds, "perplexity": perplexities(folders[domain], evals, args.max_seq_length)}
        save()
    if "student" not in students:
        students["student"] = {"perplexity": perplexities(assets["student"], evals, args.max_seq_length)}
        save()
    student = assets["student"]
    if args.heal_epochs:
        # the student init healed: a plain fine-tune (no teacher, hard labels only) on both domains' records, made once
        student = os.path.join(args.out, "student-healed", "final")
        if "student-healed" not in students or not os.path.isdir(student):
            seconds = timed_script("train.py", *common, "--seed", args.teacher_seed, "--student_name", assets["student"], "--data_file",
                                   assets["heal"], "--alpha_ce", 0, "--alpha_task", 1, "--n_epoch", args.heal_epochs,
                                   "--learning_rate", args.heal_lr, "--dump_path", os.path.dirname(student), threads=args.threads)
            students["student-healed"] = {"seconds": seconds, "perplexity": perplexities(student, evals, args.max_seq_length)}
            save()
    routed, mix = os.path.join(args.out, "teachers-routed.json"), os.path.join(args.out, "teachers-mix.json")
    _write_json(routed, [{"teacher": folders[d], "route": d} for d in DOMAINS])
    _write_json(mix, [{"teacher": folders[d]} for d in DOMAINS])
    kinds = [("routed", ["--teachers", routed, "--teacher_column", "domain"])]
    kinds += [(f"teacher-{d}", ["--teacher_name", folders[d]]) for d in DOMAINS] + [("mix", ["--teachers", mix])]
    for seed in args.seeds:
        for kind, teacher in kinds:
            name = f"{kind}-seed{seed}"
            if name in runs:
                continue
            dump = os.path.join(args.out, name)
            seconds = timed_script("train.py", *common, "--seed", seed, "--student_name", student, "--data_file", assets["train"],
                                   "--learning_rate", args.learning_rate, "--n_epoch", 1, *teacher, *args.extra, "--dump_path", dump,
                                   threads=args.threads)
            with open(os.path.join(dump, "summary.json")) as f:
                summary = json.load(f)
            runs[name] = {"perplexity": perplexities(os.path.join(dump, "final"), evals, args.max_seq_length), "seconds": seconds,
                          "train_s": summary["wall_time_s"], "steps": summary["step"], "student": student}
            if "teachers" in summary:
                runs[name]["taught"] = {t.get("route") or t["teacher"]: t["examples"] for t in summary["teachers"]}
            save()
    return results


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


@torch.inference_mode()
def perplexities(folder: str, files: dict, max_seq_length: int) -> dict:
    """{name: exp(mean next-token NLL)} of the causal LM at `folder` over each text-record file,
    tokenised as training reads it (lm_text.load_instructions: special tokens, text, EOS), fp32,
    one record at a time (no padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillation.data.lm_text import load_instructions

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = {}
    for name, path in files.items():
        total, count = 0.0, 0
        for ids in load_instructions(path, "--eval_file", tokenizer, max_seq_length, None).input_ids:
            ids = torch.tensor([ids])
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
        out[name] = float(torch.tensor(total / count).exp())
    return out


def format_routing_table(args, results: dict) -> str:
    """Held-out perplexity per domain of each distillation (per seed and mean), wall time; then
    the base model's, each domain teacher's and the student init's (raw and healed) perplexities."""
    runs = results.get("runs", {})
    kinds = ["routed"] + [f"teacher-{d}" for d in DOMAINS] + ["mix"]
    labels = {"routed": "routed by domain (--teacher_column)", "mix": "the mix of both (--teachers)",
              **{f"teacher-{d}": f"the {d} teacher alone" for d in DOMAINS}}
    lines = [f"Students (seeds {', '.join(map(str, args.seeds))}), held-out perplexity per domain:", "",
             "| distilled from | " + " | ".join(DOMAINS) + " | wall time, s |", "|---|" + "---:|" * (len(DOMAINS) + 1)]
    for kind in kinds:
        got = [runs.get(f"{kind}-seed{s}") for s in args.seeds]
        if not any(got):
            continue
        cells = [cell([g and g["perplexity"][d] for g in got], lambda x: f"{x:.2f}") for d in DOMAINS]
        cells.append(cell([g and g["seconds"] for g in got], lambda x: f"{x:.0f}"))
        lines.append(f"| {labels[kind]} | " + " | ".join(cells) + " |")
    lines += ["", "| model | " + " | ".join(DOMAINS) + " | fine-tune wall time, s |", "|---|" + "---:|" * (len(DOMAINS) + 1)]
    models = {**results.get("teachers", {}), **results.get("students", {})}
    for name in ["base"] + [f"teacher-{d}" for d in DOMAINS] + ["student", "student-healed"]:
        t = models.get(name)
        if t:
            seconds = f"{t['seconds']:.0f}" if "seconds" in t else ""
            lines.append(f"| {name} | " + " | ".join(f"{t['perplexity'][d]:.2f}" for d in DOMAINS) + f" | {seconds} |")
    return "\n".join(lines)
