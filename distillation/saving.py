"""The student folders a run leaves: final/ (the last weights), best/ (--save_best_metric),
epoch-N/ or step-N/ (--save_strategy, the newest --save_total_limit kept), and early stopping.

Each folder loads with `from_pretrained` / `pipeline()`: the student, its tokenizer, the
projection of hidden losses beside it (never inside), and a model card (README.md) saying
where it comes from. Every rank takes the same decisions (the metrics are gathered first);
only the main process writes.
"""

import os
import shlex
import shutil
import sys

from safetensors.torch import save_file

from distillation.lora import ADAPTER_FOLDER, lora_config, merged_state, save_adapter, student_parameters
from distillation.reporting import loss_formula, millions


class ModelFolders:
    def __init__(self, cfg, objective, tokenizer, teacher_parameters, enabled: bool, full_state):
        self.cfg, self.objective, self.tokenizer, self.enabled = cfg, objective, tokenizer, enabled
        self.full_state = full_state  # model -> its whole state dict (gathered from the shards under fsdp)
        self.teacher_parameters = teacher_parameters
        self.metric = cfg.save_best_metric
        self.lower_is_better = self.metric is not None and objective.metrics[self.metric.removeprefix("eval_")] == "min"
        self.best = {"value": None, "step": None, "evals_since": 0}
        # How this process was started (scripts/train.py, distil-train, or the demo calling run()).
        self.command = shlex.join((["python"] if sys.argv[0].endswith(".py") else []) + sys.argv)

    # --- best/ and early stopping ------------------------------------------------------------
    def after_eval(self, model, metrics: dict, step: int, epoch: float):
        """Keep best/ up to date; returns (improved, stop early)."""
        if self.metric is None:
            return False, False
        value, best = metrics[self.metric], self.best["value"]
        improved = best is None or (value < best if self.lower_is_better else value > best)
        if improved:
            self.best = {"value": value, "step": step, "evals_since": 0}
            self.save("best", model, metrics, step, epoch, f"the best {self.metric} ({value:.4g}) of the run")
        else:
            self.best["evals_since"] += 1
        patience = self.cfg.early_stopping_patience
        return improved, bool(patience) and self.best["evals_since"] >= patience

    # --- epoch-N/ and step-N/ ------------------------------------------------------------------
    def periodic(self, model, metrics: dict, step: int, epoch: float, epoch_end: bool) -> None:
        """Save epoch-N/ at an epoch end or step-N/ every --save_steps, as --save_strategy says. The
        Distiller calls this after every step and again at each epoch end: a step folder is due
        only in the first call (an epoch ending on a --save_steps multiple saves it once)."""
        strategy = self.cfg.save_strategy
        if strategy == "epoch" and epoch_end:
            name = f"epoch-{round(epoch)}"
        elif strategy == "steps" and not epoch_end and step % self.cfg.save_steps == 0:
            name = f"step-{step}"
        else:
            return
        self.save(name, model, metrics, step, epoch, f"--save_strategy {strategy}")
        limit = self.cfg.save_total_limit
        if limit and self.enabled:
            prefix = name.split("-")[0] + "-"
            kept = sorted((f for f in os.listdir(self.cfg.dump_path) if f.startswith(prefix) and f[len(prefix):].isdigit()),
                          key=lambda f: int(f[len(prefix):]))
            for old in kept[:-limit]:
                shutil.rmtree(os.path.join(self.cfg.dump_path, old))

    # --- one folder ----------------------------------------------------------------------------
    def save(self, name: str, model, metrics: dict, step: int, epoch: float, why: str) -> str:
        """The student (+ tokenizer, projection, model card) as dump_path/name, replaced whole."""
        folder = os.path.join(self.cfg.dump_path, name)
        state = self.full_state(model)  # every rank: a collective under fsdp
        if not self.enabled:
            return folder
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        student = _part(state, "student.")
        lora = lora_config(model.student)  # --lora_r: save the merged model, the adapters beside
        if lora is not None:
            student, adapter = merged_state(student, model.student)
            save_adapter(tmp, lora, adapter, self.cfg.shown("student_name"))
        model.student.save_pretrained(tmp, state_dict=student)
        self.tokenizer.save_pretrained(tmp)
        if model.projection is not None:
            projection = {k: v.detach().cpu().contiguous() for k, v in _part(state, "projection.").items()}
            save_file(projection, os.path.join(tmp, "projection.safetensors"))
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(self.model_card(name, model, metrics, step, epoch, why))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder

    def model_card(self, name, model, metrics, step, epoch, why) -> str:
        cfg = self.cfg
        n_student = student_parameters(model.student)
        evaluation = cfg.shown("eval_file") or (f"{cfg.validation_split:g} of --data_file held out" if cfg.validation_split else None)
        lines = [
            "---", "library_name: transformers", "tags: [distillation]", "---", "",
            f"# {os.path.basename(cfg.dump_path.rstrip('/'))}/{name}", "",
            f"A student trained by `distillation` ({cfg.objective}); this folder holds {why}, "
            f"saved at step {step} (epoch {epoch:.2f}).", "",
            f"- teacher: {teacher_line(cfg)}"
            + (f", {millions(self.teacher_parameters)} parameters" if self.teacher_parameters else ""),
            f"- student: {cfg.shown('student_name') or cfg.student_config}, {millions(n_student)} parameters, "
            f"{model.student.config.num_hidden_layers} layers",
            f"- data: {cfg.shown('data_file')}; evaluation: {evaluation or 'none'}",
            f"- loss: {loss_formula(cfg, self.objective)}",
            f"- optimisation: {f'{cfg.max_steps} steps' if cfg.max_steps else f'{cfg.n_epoch} epochs'}, batch "
            f"{cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation per process, AdamW lr {cfg.learning_rate:g}, "
            f"warm-up {cfg.warmup_prop:g}, weight decay {cfg.weight_decay:g}, clip {cfg.max_grad_norm:g}, {cfg.precision}",
        ]
        if cfg.lora_r:
            lines.append(f"- LoRA (r {cfg.lora_r}, alpha {cfg.lora_alpha:g}, dropout {cfg.lora_dropout:g}): this folder holds the merged "
                         f"weights; `{ADAPTER_FOLDER}/` the adapters alone (peft's `PeftModel.from_pretrained(<{cfg.shown('student_name')}>, "
                         f"\"{ADAPTER_FOLDER}\")`)")
        if metrics:
            lines += ["", "## Evaluation at this step", "", "| metric | value |", "|---|---:|"]
            lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += ["", "## How it was made", "", "```bash", self.command, "```", "",
                  "Every option the run used is in `parameters.json` beside this folder "
                  "(`python scripts/train.py --config parameters.json` repeats it).", ""]
        if self.objective.pipeline_task:
            lines += ["## Use", "", "```python", "from transformers import pipeline", "",
                      f'pipe = pipeline("{self.objective.pipeline_task}", model="{os.path.join(cfg.dump_path, name)}")', "```", ""]
        return "\n".join(lines)

    def state_dict(self) -> dict:
        return dict(self.best)

    def load_state_dict(self, state: dict) -> None:
        self.best = dict(state)


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def teacher_line(cfg) -> str:
    if cfg.teacher_name:
        return cfg.shown("teacher_name")
    if cfg.teacher_url:
        return f"served at {cfg.teacher_url} (its top {cfg.teacher_top_k} log-probabilities a position)"
    return f"its logits cached in {cfg.teacher_logits}" if cfg.teacher_logits else "none (trained on the labels only)"
