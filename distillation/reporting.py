"""Where a run reports: the console (what it is about to do, one line per evaluation, a final
summary), metrics.jsonl (one JSON object per event) and TensorBoard scalars.

Only the main process writes; on other ranks every call is a no-op. The files are appended
to, so a resumed run continues them. Console lines go through tqdm.write, above the bar.
"""

import json
import os
import resource
import time

import torch
from tqdm.auto import tqdm

from distillation.distributed import fast_bf16
from distillation.lora import student_parameters
from distillation.memory_plan import plan_of_run
from distillation.on_policy import collapse


class RunLog:
    def __init__(self, dump_path: str, enabled: bool):
        self.enabled, self.dump_path = enabled, dump_path
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(dump_path, "log", "train"))
            self.metrics = open(os.path.join(dump_path, "metrics.jsonl"), "a")

    def say(self, *lines: str) -> None:
        """Print to stdout, above the progress bar."""
        if self.enabled:
            for line in lines:
                tqdm.write(line)

    def write(self, record: dict, group: str) -> None:
        """Append `record` to metrics.jsonl and plot its numbers under `group/` at its step."""
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{group}/{key}", value, record["step"])
        self.writer.flush()

    def answers(self, step: int, answers: list) -> None:
        """--eval_generate: the student's answers at this evaluation, appended to eval_answers.jsonl
        (the numbers say how the teacher rates them; the text says what they are)."""
        if self.enabled:
            with open(os.path.join(self.dump_path, "eval_answers.jsonl"), "a") as f:
                f.writelines(json.dumps({"step": step, **answer}) + "\n" for answer in answers)

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            self.writer.close()


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Window:
    """Loss terms and throughput accumulated since the last metrics line: each term the mean over
    the steps that have it (a step without task targets has no task loss, not a 0 to average)."""

    def __init__(self):
        self.last_loss = float("nan")
        self._reset()

    def _reset(self):
        self.sums, self.counts, self.steps, self.start = {}, {}, 0, time.time()

    def add(self, values):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1
        self.last_loss = values["loss"]

    def examples_per_s(self):
        return self.sums.get("examples", 0) / max(time.time() - self.start, 1e-9)

    def flush(self):
        if not self.steps:
            return None
        record = {k: v / self.counts[k] for k, v in self.sums.items() if k not in ("examples", "tokens")}
        record.update(examples=self.sums["examples"], tokens=self.sums["tokens"], seconds=time.time() - self.start)
        self._reset()
        return record


def as_logged(values: dict, terms) -> dict:
    """A step's values as Window averages them (each term over the steps that have it): a
    sampled step's `terms` apart (`ce_on_policy`), its hard-label term, weighted 0 (the student's
    own tokens are no labels), not at all."""
    if not values["on_policy"]:
        return values
    return {f"{k}_on_policy" if k in terms else k: v for k, v in values.items() if k != "task"}


# --- console lines -----------------------------------------------------------------------------
HIDDEN = ("examples", "predicted_classes")  # in metrics.jsonl, not on the console line
ANSWERS = ("eval_teacher_nll", "eval_sample_length", "eval_sample_eos")  # --eval_generate
TEACHER_ANSWERS = ("eval_teacher_sample_length", "eval_teacher_sample_eos")  # the teacher's own, the yardstick


def eval_line(step: int, epoch: float, metrics: dict, improved: bool = False) -> str:
    """`eval step 94 (epoch 1.00) | student loss 0.65 accuracy 0.7210 | teacher ... | agreement 0.9050`."""
    between = ("eval_teacher_agreement", *ANSWERS, *TEACHER_ANSWERS)  # the student against the teacher, on their own
    student = {k[5:]: v for k, v in metrics.items() if not k.startswith("eval_teacher_") and k not in between}
    teacher = {k[13:]: v for k, v in metrics.items() if k.startswith("eval_teacher_") and k not in between}
    parts = [f"eval step {step} (epoch {epoch:.2f})", "student " + _numbers(student)]
    if teacher:
        parts.append("teacher " + _numbers(teacher))
    if "eval_teacher_agreement" in metrics:
        parts.append(f"agreement {metrics['eval_teacher_agreement']:.4f}")
    if ANSWERS[0] in metrics:
        parts.append("the student's answers: teacher NLL {:.4g}, length {:.4g}, ending in EOS {:.4g}".format(*map(metrics.get, ANSWERS))
                     + (" (the teacher's own: length {:.4g}, EOS {:.4g})".format(*map(metrics.get, TEACHER_ANSWERS))
                        if TEACHER_ANSWERS[0] in metrics else ""))
    line = " | ".join(parts) + (" (best so far)" if improved else "")
    if collapse(metrics):
        line += "\n  warning: " + collapse(metrics)
    if student.get("predicted_classes") == 1:
        line += "\n  warning: the student predicts one class for every evaluation example; check --learning_rate and the labels"
    return line


def _numbers(values: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items() if k not in HIDDEN)


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def millions(n) -> str:
    """12.3M, or 45.6k below 100k."""
    return "?" if n is None else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def run_header(d, fresh_weights) -> list:
    """What the run is about to do (d: the Distiller), defaults that were not given included."""
    cfg, n_eval = d.cfg, len(d.eval_dataset) if d.eval_dataset is not None else 0
    teacher = (f"teacher {cfg.shown('teacher_name')} ({millions(d.teacher.parameters())} parameters, {cfg.teacher_dtype})" if cfg.teacher_name
               else f"teacher logits cached in {cfg.teacher_logits} (the teacher is not loaded)" if cfg.teacher_logits
               else f"teacher served at {cfg.teacher_url} (not loaded here)" if cfg.teacher_url else "no teacher")
    student = f"student {cfg.shown('student_name') or cfg.student_config} ({millions(student_parameters(d.model.student))})"
    if cfg.lora_r:
        trained = sum(p.numel() for p in d.model.student.parameters() if p.requires_grad)
        student += f", LoRA r={cfg.lora_r} alpha={cfg.lora_alpha:g}: {millions(trained)} parameters trained"
    evaluation = f"{n_eval:,} evaluation {getattr(d.eval_dataset, 'unit', 'examples')} ({cfg.shown('eval_file') or f'--validation_split {cfg.validation_split:g}'})" if n_eval else "no evaluation"
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * d.env.world_size
    read = f": {d.train_dataset.read}" if getattr(d.train_dataset, "read", "") else ""  # a text file: its lines and tokens
    n_unlabelled = getattr(d.train_dataset, "unlabelled", 0)
    unlabelled = (f"{' + ' + cfg.unlabelled_file if cfg.unlabelled_file else ''}: {len(d.train_dataset) - n_unlabelled:,} labelled, "
                  f"{n_unlabelled:,} unlabelled, on the teacher's soft targets only") if n_unlabelled else ""
    lines = [
        f"{cfg.objective}: {teacher} -> {student}",
        f"data: {len(d.train_dataset):,} training {getattr(d.train_dataset, 'unit', 'examples')} ({cfg.shown('data_file')}{read}{unlabelled}), {evaluation}; max_seq_length {cfg.max_seq_length}",
        (f"steps: {d.total_steps} (--max_steps; an epoch is {d.steps_per_epoch}; " if cfg.max_steps else
         f"steps: {d.total_steps} = {d.n_epoch} epoch(s) x {d.steps_per_epoch} (") + f"batch {cfg.batch_size} x "
        f"{cfg.gradient_accumulation_steps} accumulation x {d.env.world_size} process(es) = {per_step} examples a step)",
        f"loss: {loss_formula(cfg, d.objective)}; AdamW lr {cfg.learning_rate:g}, warm-up {cfg.warmup_prop:g}, weight decay {cfg.weight_decay:g}, "
        f"clip {cfg.max_grad_norm:g}; {cfg.precision}",
    ]
    if cfg.on_policy_fraction:
        lines.append(f"on-policy: on {100 * cfg.on_policy_fraction:g}% of the steps the student answers the prompts (temperature "
                     f"{cfg.generation_temperature:g}, at most {cfg.max_new_tokens} new tokens) and learns the teacher's "
                     f"{cfg.divergence} on its own tokens; no hard labels on those steps")
    if cfg.resume:
        lines.append(f"resume: from step {d.step} of {d.total_steps} (epoch {d.epoch}, batch {d.batch_in_epoch} of it)"
                     + (": already complete" if d.step >= d.total_steps else ""))
    if d.teacher.description:
        lines.append(f"teacher logits: {d.teacher.description}")
    if hasattr(d.objective, "describe"):  # a teacher with another tokenizer
        lines.append(f"tokenizers: {d.objective.describe(d.train_dataset)}")
    if d.teacher.warning:
        lines.append(f"warning: {d.teacher.warning}")
    if d.env.is_distributed:
        lines.append(f"strategy: {d.strategy.name} over {d.env.world_size} processes ({d.strategy.holds})")
        if d.strategy.loaded:
            lines.append("loading: " + "; ".join(f"the {role} {how}" for role, how in d.strategy.loaded.items()))
    lines.append(plan_of_run(d).line())
    if cfg.precision == "bf16" and not fast_bf16(d.device):
        lines.append("warning: this CPU has no native bf16 (AVX512-BF16/AMX): --precision bf16 is emulated and much slower "
                     "than fp32 here")
    for name, data in (("--data_file", d.train_dataset), ("--eval_file", d.eval_dataset)):
        if getattr(data, "dropped", 0):
            why = getattr(data, "dropped_why", None) or f"their prompt fills --max_seq_length {cfg.max_seq_length}"
            lines.append(f"{name}: {data.dropped} record(s) left out: {why}")
        if getattr(data, "unknown_share", 0) > 0.01:
            lines.append(f"warning: {100 * data.unknown_share:.1f}% of the {name} targets are the unknown token: the tokenizer "
                         "does not know this text (is --tokenizer_name the right one?)")
    if getattr(cfg, "defaulted", None):
        lines.append(f"defaults of {cfg.objective} used: " + ", ".join(f"{n} {show(getattr(cfg, n))}" for n in cfg.defaulted))
    if fresh_weights:
        lines.append(f"student weights initialised at random: {', '.join(fresh_weights[:6])}{' ...' if len(fresh_weights) > 6 else ''}")
    return lines


DIVERGENCE_NAMES = {"forward_kl": "KL", "reverse_kl": "reverse KL", "jsd": "JSD", "skew_kl": "skew KL", "tvd": "TVD"}


def loss_formula(cfg, objective) -> str:
    """`0.5·KL(T=2) + 0.5·CE(task)` (or `1·JSD(T=2, β=0.5) + ...`): the run's loss terms with their weights."""
    beta = "" if cfg.divergence_beta is None else f", β={cfg.divergence_beta:g}"
    terms = ((f"{DIVERGENCE_NAMES[cfg.divergence]}(T={cfg.temperature:g}{beta})", cfg.alpha_ce),
             (f"CE({objective.task_loss_name})", cfg.alpha_task), ("logit MSE", cfg.alpha_mse),
             (f"hidden MSE ({cfg.layer_map})", cfg.alpha_hidden_mse), (f"hidden cosine ({cfg.layer_map})", cfg.alpha_cos))
    return " + ".join(f"{alpha:g}·{name}" for name, alpha in terms if alpha > 0)


def run_summary(d, summary) -> list:
    """The end of a run: where the model is, last (and best) evaluation, time and speed."""
    speed = f", {summary['examples_per_s']:.1f} examples/s" if summary["examples_per_s"] else ""
    how = "interrupted" if summary["interrupted"] else "stopped early" if summary["stopped_early"] else "done"
    lines = [f"{how}: step {summary['step']} (epoch {summary['epoch']:.2f}) in {duration(summary['wall_time_s'])}{speed}"]
    if d.last_eval:
        lines.append(f"last eval (step {d.last_eval_step}): " + _numbers({k[5:]: v for k, v in d.last_eval.items()
                                                                          if not k.startswith("eval_teacher_") or k in ANSWERS}))
        if collapse(d.last_eval):
            lines.append("warning: " + collapse(d.last_eval))
    if summary.get("teacher_requests"):
        lines.append(f"teacher server: {summary['teacher_requests']:,} requests; the student waited {summary['teacher_wait_s']:.1f} s "
                     "for them (this process)")
    if summary.get("teacher_cache"):
        cache = summary["teacher_cache"]
        lines.append(f"teacher cache: {cache['served_from_cache']:,} of {cache['training_examples']:,} training examples served "
                     f"from memory ({100 * (cache['hit_rate'] or 0):.1f}%)")
    if summary["best"]:
        best = summary["best"]
        lines.append(f"best {best['metric']} {best['value']:.4g} at step {best['step']}: {best['folder']}")
    if summary["final"]:
        lines.append(f"student: {summary['final']} (from_pretrained / pipeline); metrics: "
                     f"{os.path.join(d.cfg.dump_path, 'metrics.jsonl')}, summary.json")
    else:
        lines.append(f"checkpoint: {os.path.join(d.cfg.dump_path, 'checkpoint')} (continue with --resume)")
    return lines


def show(value) -> str:
    """An option's value as people write it: on/off, 0.0001, 32."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)
