"""Teacher-vs-student report of saved classifiers: accuracy, macro-F1, agreement, size, latency.

One code path for scripts/demo.py and scripts/evaluate.py, so their figures agree on the same
folders. Quality goes through the classification objective's own `eval_batch`/`eval_metrics`
(the ones the Distiller evaluates with), in fp32, over batches sorted by length. Latency is
per example on the CPU: batch 1 (no padding), `torch.inference_mode`, fp32, the median over
the first examples of the eval file after a warm-up, with teacher and student timed in turn on
each example so that a load spike from other processes hits both alike.
"""

import os
import statistics
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillation.config import DistillConfig
from distillation.errors import InputError
from distillation.models import forward_inputs, load_config
from distillation.objectives.classification import SequenceClassification
from distillation.reporting import duration, millions

WARMUP = 5  # first calls allocate buffers and pick kernels; not timed
# Defaults of both scripts: the same batches give the same (fp32) logits, hence the same figures.
EVAL_BATCH_SIZE = 64
MAX_SEQ_LENGTH = 128
LATENCY_EXAMPLES = 100


def load_classifier(folder: str, flag: str):
    """A saved sequence classifier in eval mode; refuses folders without a classification head."""
    config = load_config(folder, flag)
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise InputError(
            f"{flag}: '{folder}' holds no sequence-classification model (architectures: {config.architectures}); "
            "its head would be random"
        )
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    model.eval()
    return model


def build_report(model_dir, eval_file, teacher_dir=None, text_column="text", label_column="label",
                 text_pair_column=None, max_seq_length=MAX_SEQ_LENGTH, batch_size=EVAL_BATCH_SIZE,
                 latency_examples=LATENCY_EXAMPLES) -> dict:
    """Quality, parameters and CPU latency of the student at `model_dir` (and the teacher)."""
    models = {"student": load_classifier(model_dir, "--model")}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--model: cannot load a tokenizer from '{model_dir}' ({type(err).__name__}); "
                         "save the training tokenizer beside the model") from None
    if teacher_dir:
        models["teacher"] = load_classifier(teacher_dir, "--teacher")
        if models["teacher"].config.vocab_size != models["student"].config.vocab_size:
            raise InputError("--teacher: its vocabulary differs from the --model's; both read the --model's token ids here")
    # The objective reads only its data options here; `teacher_name` is the model whose
    # label names fix the id of each string label in the file, as in training.
    cfg = DistillConfig(
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        max_seq_length=max_seq_length, teacher_name=teacher_dir or model_dir,
    )
    objective = SequenceClassification(cfg, tokenizer)
    dataset = objective.load_dataset(eval_file, "--eval_file")
    objective.check_models(models.get("teacher"), models["student"], dataset)

    metrics = evaluate_quality(objective, dataset, models, batch_size)
    load_before = os.getloadavg()[0]
    latency = measure_latency(objective, dataset, models, latency_examples)
    report = {"eval_file": eval_file, "examples": len(dataset)}
    for name, model in models.items():
        prefix = "teacher_" if name == "teacher" else ""
        report[name] = {
            "model": teacher_dir if name == "teacher" else model_dir,
            "layers": model.config.num_hidden_layers,
            "accuracy": metrics[f"{prefix}accuracy"],
            "macro_f1": metrics[f"{prefix}macro_f1"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "latency_ms": latency[name],
        }
    if teacher_dir:
        teacher, student = report["teacher"], report["student"]
        report["agreement"] = metrics["teacher_agreement"]
        report["accuracy_retained"] = student["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else None
        report["speedup"] = teacher["latency_ms"] / student["latency_ms"]
    report["latency"] = {
        "examples": min(latency_examples, len(dataset)), "batch_size": 1, "device": "cpu", "dtype": "fp32",
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        # Other processes on the machine slow every figure; the load says how busy it was.
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    return report


@torch.inference_mode()
def evaluate_quality(objective, dataset, models, batch_size) -> dict:
    """The objective's metrics of the student (and teacher_* ones) over the whole dataset."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = {name: forward_inputs(m) for name, m in models.items()}
    order = sorted(range(len(dataset)), key=dataset.lengths.__getitem__)  # less padding
    stats = {}
    for first in range(0, len(order), batch_size):
        batch = objective.collate([dataset[i] for i in order[first : first + batch_size]])
        batch = objective.prepare_batch({k: v.to(device) for k, v in batch.items()})
        inputs = objective.model_inputs(batch)
        logits = {name: _logits(m.to(device), inputs, accepted[name]) for name, m in models.items()}
        for k, v in objective.eval_batch(logits["student"], logits.get("teacher"), batch).items():
            stats.setdefault(k, []).append(v)
    for model in models.values():
        model.to("cpu")
    return objective.eval_metrics({k: torch.cat(v) for k, v in stats.items()})


@torch.inference_mode()
def measure_latency(objective, dataset, models, n_examples) -> dict:
    """Median milliseconds per example of each model: CPU, batch 1, after WARMUP calls."""
    accepted = {name: forward_inputs(m) for name, m in models.items()}
    n = min(n_examples, len(dataset))
    times = {name: [] for name in models}
    for step in range(WARMUP + n):
        batch = objective.collate([dataset[(step - WARMUP) % n]])
        inputs = objective.model_inputs(objective.prepare_batch(batch))
        for name, model in models.items():
            start = time.perf_counter()
            _logits(model, inputs, accepted[name])
            if step >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _logits(model, inputs, accepted):
    return model(**{k: v for k, v in inputs.items() if k in accepted}).logits.float()


# --- rendering ---------------------------------------------------------------------------------
def format_report(report: dict) -> str:
    """The report as markdown: a teacher/student table, then the stages' wall times if any."""
    s, t = report["student"], report.get("teacher")
    lat = report["latency"]
    rows = [
        ("accuracy", _pct(s["accuracy"]), t and _pct(t["accuracy"]), t and f"{_pct(report['accuracy_retained'])} kept"),
        ("macro-F1", _pct(s["macro_f1"]), t and _pct(t["macro_f1"]), t and f"{_pct(s['macro_f1'] / t['macro_f1'])} kept"),
        ("layers", str(s["layers"]), t and str(t["layers"]), None),
        ("parameters", millions(s["parameters"]), t and millions(t["parameters"]),
         t and f"{s['parameters'] / t['parameters']:.2f}x"),
        (f"latency, ms/example (CPU, batch 1, {lat['threads']} thread{'s' if lat['threads'] > 1 else ''})", f"{s['latency_ms']:.2f}",
         t and f"{t['latency_ms']:.2f}", t and f"{report['speedup']:.2f}x faster"),
    ]
    lines = []
    if t:
        lines += ["| | teacher | student | student vs teacher |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {tv} | {sv} | {rel or ''} |" for name, sv, tv, rel in rows]
    else:
        lines += ["| | model |", "|---|---:|"] + [f"| {name} | {sv} |" for name, sv, _, _ in rows]
    lines.append("")
    if t:
        lines.append(f"Student and teacher agree on {_pct(report['agreement'])} of the {report['examples']} examples of {report['eval_file']}.")
    else:
        lines.append(f"{report['examples']} examples of {report['eval_file']}.")
    lines.append(
        f"Latency: median of {lat['examples']} examples, fp32, torch.inference_mode; "
        f"load average {lat['load_avg_1min'][0]}-{lat['load_avg_1min'][1]} on {lat['cpu_count']} CPUs."
    )
    if report.get("stages"):
        lines += ["", "| stage | wall time |", "|---|---:|"]
        lines += [f"| {name} | {duration(sec)} |" for name, sec in report["stages"].items()]
        lines.append(f"| **total** | **{duration(report['total_s'])}** |")
    return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
