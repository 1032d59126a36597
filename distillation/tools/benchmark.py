"""Seed 001's Trainer recipe against our Distiller, on the same work, in one invocation.

Each run (the recipe, ours, each lever of ours) is a child process, so its peak resident
memory is its own: `os.wait4` returns the child's `ru_maxrss`. Both sides load the same
teacher and student init folders, train on the same examples with the same batch size,
epochs, learning rate and seed, and write their student to `final/`; one evaluator (fp32,
the same batches) scores every student afterwards, so accuracy never depends on whose
evaluation loop ran. Throughput is examples trained / wall seconds of the training call
(`Trainer.train()` / `Distiller.train()`, each with its per-epoch checkpoint); with
`--repeats N` every run is made N times, interleaved, and the fastest copy is reported.

FLOPs of the useful work, per example of T real (unpadded) tokens:
6·N_s·T (student forward + backward) + 2·N_t·T (teacher forward, only where it runs: once
with --cache_teacher_logits), N = weights of the Linear layers inside the Transformer
blocks (embedding lookups cost no matmul; attention's S² terms are <2% at tweet length).
MFU = achieved FLOP/s / the matmul peak timed here (2048² bf16 and fp32 GEMMs).

`python -m distillation.tools.benchmark SPEC.json` is the child entry point.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import torch
from torch import nn

from distillation.data.grouped_batch_sampler import epoch_batches
from distillation.data.text_classification import collate_classification
from distillation.errors import InputError
from distillation.tools.trainer_recipe import RECIPE_CHANGES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


# --- child processes ---------------------------------------------------------------------
def run_child(spec: dict) -> dict:
    """Run one side in a fresh process; its result plus `peak_rss_mb` (that process only).

    The spec, log and result sit beside the run folder `spec["out"]`, which our side wipes
    and recreates."""
    os.makedirs(os.path.dirname(spec["out"]), exist_ok=True)
    with open(spec["out"] + ".spec.json", "w") as f:
        json.dump(spec, f)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ROOT}
    with open(spec["out"] + ".log", "w") as log:
        cmd = [sys.executable, "-m", "distillation.tools.benchmark", spec["out"] + ".spec.json"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(spec["out"] + ".log") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"benchmark child '{spec['side']}' failed (exit {proc.returncode}):\n{tail}")
    with open(spec["out"] + ".result.json") as f:
        return {**json.load(f), "peak_rss_mb": usage.ru_maxrss / 1024}  # Linux reports KiB


def run_ours(spec: dict) -> dict:
    from distillation.config import DistillConfig
    from distillation.pipeline import run

    start = time.perf_counter()
    cfg = DistillConfig.from_dict({
        "dump_path": spec["out"], "force": True, "objective": "sequence_classification", "seed": spec["seed"],
        "data_file": spec["data_file"], "teacher_name": spec["teacher"], "student_name": spec["student"],
        "n_epoch": spec["epochs"], "batch_size": spec["batch_size"], "learning_rate": spec["learning_rate"],
        "temperature": 2.0, "alpha_ce": spec.get("alpha_ce", 0.5), "alpha_task": spec.get("alpha_task", 0.5),
        "precision": spec["precision"], "cache_teacher_logits": spec.get("cache_teacher_logits", False),
        "group_by_size": spec.get("group_by_size", True), "compile": spec.get("compile", False),
        "num_workers": spec.get("num_workers", 0),
        # The Trainer's defaults, so both sides follow the same schedule and clipping.
        "warmup_prop": 0.0, "max_grad_norm": 1.0, "adam_epsilon": 1e-8, "weight_decay": 0.0,
    })
    summary = run(cfg)
    total = time.perf_counter() - start
    return {"setup_s": total - summary["wall_time_s"], "train_s": summary["wall_time_s"], "final": os.path.join(spec["out"], "final")}


def child_main(spec_file: str) -> None:
    from distillation.cli import main_guard

    with open(spec_file) as f:
        spec = json.load(f)

    def main():
        if spec["side"] == "recipe":
            from distillation.tools.trainer_recipe import run_recipe

            result = run_recipe(spec)
        else:
            result = run_ours(spec)
        with open(spec["out"] + ".result.json", "w") as f:
            json.dump(result, f)

    sys.exit(main_guard(main))


# --- measurements --------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of an n×n GEMM in `dtype` on all of this process's threads (best of a few)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # first call pays for the kernel choice
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def block_linear_params(model) -> int:
    """N of the FLOP formula: Linear weights inside the Transformer blocks."""
    from distillation.students import find_layer_list

    _, _, blocks = find_layer_list(model)
    return sum(m.weight.numel() for m in blocks.modules() if isinstance(m, nn.Linear))


def padded_tokens(lengths, batches) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def encode(tokenizer, texts, label_ids):
    enc = tokenizer(texts, truncation=True)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "label": label_ids[i], "index": i} for i in range(len(texts))]


@torch.no_grad()
def accuracy(model_dir: str, examples, pad_id: int, batch_size: int = 64) -> float:
    """Held-out accuracy in fp32, length-sorted batches: the same for every student."""
    from transformers import AutoModelForSequenceClassification

    from distillation.models import forward_inputs

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    accepted = forward_inputs(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    correct = 0
    for start in range(0, len(order), batch_size):
        batch = collate_classification([examples[i] for i in order[start : start + batch_size]], pad_id)
        logits = model(**{k: v for k, v in batch.items() if k in accepted and k != "labels"}).logits
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(examples)


def teacher_modes(teacher_dir: str, examples, pad_id: int, batch_size: int, precision: str, n_batches: int = 8) -> dict:
    """Milliseconds per teacher forward over the first training batches, in each way of
    running it: the levers 'teacher without grad' and 'hidden states only when needed'."""
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    lengths = [len(e["input_ids"]) for e in examples]
    plan = epoch_batches(lengths, batch_size, 0, 0)[:n_batches]
    batches = [collate_classification([examples[i] for i in b], pad_id) for b in plan]
    inputs = [{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b} for b in batches]
    dtype = torch.bfloat16 if precision == "bf16" else None

    def grad_on(x):
        return teacher(**x).logits

    def recipe(x):
        with torch.no_grad():
            teacher.to(x["input_ids"].device)
            return teacher(**x).logits

    def no_grad(x, hidden=False):
        with torch.no_grad():
            return teacher(**x, output_hidden_states=hidden).logits

    def inference(x):
        with torch.inference_mode():
            return teacher(**x).logits

    modes = {
        "grad enabled (params trainable)": grad_on,
        "no_grad + teacher.to(device) each step (recipe)": recipe,
        "no_grad, frozen (ours)": no_grad,
        "inference_mode, frozen": inference,
        "no_grad + output_hidden_states": lambda x: no_grad(x, hidden=True),
    }
    times = {}
    for name, fn in modes.items():
        teacher.requires_grad_(name.startswith(("grad", "no_grad + teacher")))
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            fn(inputs[0])
            start = time.perf_counter()
            for x in inputs:
                fn(x)
        times[name] = 1000 * (time.perf_counter() - start) / len(inputs)
    return times


# --- the invocation ------------------------------------------------------------------------
LEVERS = (  # (name, spec change); each is ours with one thing flipped from the head-to-head run
    ("group_by_size", lambda s: {"group_by_size": not s["group_by_size"]}),
    ("precision", lambda s: {"precision": "fp32" if s["precision"] == "bf16" else "bf16"}),
    ("cache_teacher_logits", lambda s: {"cache_teacher_logits": not s["cache_teacher_logits"]}),
    ("compile", lambda s: {"compile": not s["compile"]}),
    ("num_workers", lambda s: {"num_workers": 0 if s["num_workers"] else 2}),
)


def benchmark(args) -> dict:
    """Everything the report shows, measured now. `args`: see scripts/benchmark.py."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from distillation.tools.benchmark_assets import quick_assets, real_assets

    wanted = [name for name, _ in LEVERS] if args.levers == "all" else args.levers.split(",") if args.levers else []
    unknown = sorted(set(wanted) - {name for name, _ in LEVERS})
    if unknown:
        raise InputError(f"--levers: unknown lever '{unknown[0]}' (choose from {', '.join(name for name, _ in LEVERS)})")
    load = {"start": os.getloadavg()}
    peak = {"bf16": 0.0, "fp32": 0.0}

    def measure_peak():  # the best of timings taken between runs: the machine may be shared
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            peak[name] = max(peak[name], matmul_peak(dtype, 512 if args.quick else 2048))

    measure_peak()
    assets = quick_assets(args) if args.quick else real_assets(args, run_child)
    tokenizer = AutoTokenizer.from_pretrained(assets["teacher"])
    label2id = AutoConfig.from_pretrained(assets["teacher"]).label2id
    if any(label not in label2id for label in assets["train"]["labels"] + assets["eval"]["labels"]):
        label2id = {name: i for i, name in enumerate(sorted(set(assets["train"]["labels"])))}  # unnamed teacher labels
    train = encode(tokenizer, assets["train"]["texts"], [label2id[y] for y in assets["train"]["labels"]])
    held_out = encode(tokenizer, assets["eval"]["texts"], [label2id[y] for y in assets["eval"]["labels"]])
    lengths = [len(e["input_ids"]) for e in train]
    pad_id = tokenizer.pad_token_id or 0

    runs_dir = os.path.join(args.work_dir, "runs", f"{'quick_' if args.quick else ''}e{args.epochs}")
    common = {"teacher": assets["teacher"], "student": assets["student"], "epochs": args.epochs,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed}
    ours = {**common, "side": "ours", "data_file": assets["train"]["file"], "precision": args.precision,
            "cache_teacher_logits": args.cache_teacher_logits, "group_by_size": args.group_by_size,
            "compile": args.compile, "num_workers": args.num_workers}
    recipe = {**common, "side": "recipe", "texts": assets["train"]["texts"], "labels": [e["label"] for e in train]}
    specs = {"recipe": {**recipe, "out": os.path.join(runs_dir, "recipe")}, "ours": {**ours, "out": os.path.join(runs_dir, "ours")}}
    for name, change in LEVERS:
        if name in wanted:
            specs[f"ours, {name}"] = {**ours, **change(ours), "out": os.path.join(runs_dir, f"lever_{name}")}

    teacher = AutoModelForSequenceClassification.from_pretrained(assets["teacher"])
    student = AutoModelForSequenceClassification.from_pretrained(assets["student"])
    n_s, n_t = block_linear_params(student), block_linear_params(teacher)
    real = sum(lengths)
    fastest = {}
    for repeat in range(args.repeats):  # interleaved, so a busy spell of a shared machine hits one copy only
        for name, spec in specs.items():
            print(f"running {name} ({repeat + 1}/{args.repeats}) ...", flush=True)
            result = run_child(spec)
            measure_peak()
            if name not in fastest or result["train_s"] < fastest[name]["train_s"]:
                fastest[name] = {**result, "final": _keep(result["final"], spec["out"])}
    results = {}
    for name, spec in specs.items():
        result = fastest[name]
        teacher_passes = 1 if spec["side"] == "ours" and spec["cache_teacher_logits"] else args.epochs
        flops = args.epochs * real * 6 * n_s + teacher_passes * real * 2 * n_t
        if spec["side"] == "recipe":
            padded = result["padded_tokens"]
        else:
            plans = [epoch_batches(lengths, args.batch_size, args.seed, e, spec["group_by_size"]) for e in range(args.epochs)]
            padded = sum(padded_tokens(lengths, p) for p in plans)
        precision = spec.get("precision", "fp32")
        results[name] = {
            **{k: result[k] for k in ("train_s", "setup_s", "peak_rss_mb")},
            "precision": precision,
            "examples_per_s": args.epochs * len(train) / result["train_s"],
            "padding_overhead": padded / (args.epochs * real),
            "accuracy": accuracy(result["final"], held_out, pad_id),
            "tflop_per_s": flops / result["train_s"] / 1e12,
        }
    load["end"] = os.getloadavg()
    for r in results.values():
        r["mfu"] = r["tflop_per_s"] * 1e12 / peak[r["precision"]]
        r["mfu_vs_bf16_peak"] = r["tflop_per_s"] * 1e12 / peak["bf16"]
    base = results["recipe"]
    return {
        "settings": {k: getattr(args, k) for k in ("quick", "train_size", "eval_size", "epochs", "batch_size", "learning_rate", "seed", "repeats",
                                                     "precision", "cache_teacher_logits", "group_by_size", "compile", "num_workers")},
        "load_average": load, "matmul_peak_tflop_per_s": {k: v / 1e12 for k, v in peak.items()},
        "student_block_params": n_s, "teacher_block_params": n_t, "real_tokens_per_epoch": real,
        "teacher_accuracy": accuracy(assets["teacher"], held_out, pad_id),
        "runs": results,
        "speedup": results["ours"]["examples_per_s"] / base["examples_per_s"],
        "accuracy_gap_points": 100 * (results["ours"]["accuracy"] - base["accuracy"]),
        "memory_ratio": results["ours"]["peak_rss_mb"] / base["peak_rss_mb"],
        "teacher_forward_ms": teacher_modes(assets["teacher"], train, pad_id, args.batch_size, args.precision) if args.levers == "all" else None,
    }


def _keep(final: str, out: str) -> str:
    """Move a run's student aside, so a later repeat of the same run does not overwrite it."""
    kept = out + ".final"
    if os.path.isdir(kept):
        shutil.rmtree(kept)
    shutil.move(final, kept)
    return kept


def format_report(res: dict) -> str:
    s = res["settings"]
    best = f"; fastest of {s['repeats']} interleaved runs each" if s["repeats"] > 1 else ""
    lines = [
        f"## {s['epochs']} epoch(s), {s['train_size']} examples, batch {s['batch_size']}, lr {s['learning_rate']}, "
        f"ours: --precision {s['precision']}{' --cache_teacher_logits' if s['cache_teacher_logits'] else ''}"
        f"{'' if s['group_by_size'] else ' --no-group_by_size'}{' --compile' if s['compile'] else ''} --num_workers {s['num_workers']}"
        f"{best}",
        "",
        "| run | precision | examples/s | x recipe | train s | setup s | padded/real tokens | peak RSS MB | held-out acc | TFLOP/s | MFU | MFU vs bf16 peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["runs"].items():
        lines.append(
            f"| {name} | {r['precision']} | {r['examples_per_s']:.1f} | {r['examples_per_s'] / res['runs']['recipe']['examples_per_s']:.2f} | {r['train_s']:.1f} | {r['setup_s']:.1f} | {r['padding_overhead']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {100 * r['accuracy']:.2f} | {r['tflop_per_s']:.3f} | {100 * r['mfu']:.1f}% | {100 * r['mfu_vs_bf16_peak']:.1f}% |"
        )
    peak, load = res["matmul_peak_tflop_per_s"], res["load_average"]
    lines += [
        "",
        f"speed-up ours/recipe: **{res['speedup']:.2f}x**; accuracy ours - recipe: {res['accuracy_gap_points']:+.2f} points "
        f"(teacher {100 * res['teacher_accuracy']:.2f}, {s['eval_size']} held-out); peak memory ours/recipe: {res['memory_ratio']:.2f}",
        f"matmul peak: bf16 {peak['bf16']:.3f} TFLOP/s, fp32 {peak['fp32']:.3f} TFLOP/s; FLOPs/example = 6*{res['student_block_params']:,}*T "
        f"+ 2*{res['teacher_block_params']:,}*T (T real tokens, {res['real_tokens_per_epoch']:,}/epoch)",
        f"load average (1/5/15 min): start {'/'.join(f'{x:.2f}' for x in load['start'])}, end {'/'.join(f'{x:.2f}' for x in load['end'])}",
    ]
    lines += ["", "recipe as in seed 001 but: " + "; ".join(RECIPE_CHANGES)]
    if res["teacher_forward_ms"]:
        lines += ["", "| teacher forward, first 8 training batches | ms/batch |", "|---|---:|"]
        lines += [f"| {name} | {ms:.1f} |" for name, ms in res["teacher_forward_ms"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    child_main(sys.argv[1])
