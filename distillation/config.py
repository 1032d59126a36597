"""One dataclass holding every option of a run, its CLI, JSON load/save and validation.

`python scripts/train.py [--config FILE.json] [--flag value ...]`: the file gives values,
flags override it. Flags keep the reference distiller's names and defaults where they still
make sense (shared/reference.md); `--alpha_mlm`/`--alpha_clm` are aliases of `--alpha_task`
and `--fp16` of `--precision fp16`.
"""

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import List, Optional

from distillation.cli import ArgumentParser
from distillation.errors import InputError

OBJECTIVE_NAMES = ("mlm", "clm", "sequence_classification")


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DistillConfig:
    # --- run -------------------------------------------------------------------------------
    dump_path: str = _opt(None, "Run folder (parameters.json, metrics.jsonl, log/, checkpoint/, final/).")
    force: bool = _opt(False, "Overwrite an existing --dump_path.")
    objective: str = _opt("sequence_classification", "What is distilled.", choices=OBJECTIVE_NAMES)
    seed: int = _opt(56, "Seed of every random number generator.")
    # --- data ------------------------------------------------------------------------------
    data_file: str = _opt(None, "Training data: jsonl/csv/tsv/json (classification, instructions) or a binarized pickle (mlm/clm).")
    eval_file: Optional[str] = _opt(None, "Held-out data in the same format, evaluated at --eval_interval and each epoch end.")
    text_column: str = _opt("text", "Column holding the text (classification).")
    text_pair_column: Optional[str] = _opt(None, "Column holding the second text of a pair (classification).")
    label_column: str = _opt("label", "Column holding the label, int or string (classification).")
    max_seq_length: int = _opt(512, "Longer inputs are truncated (classification, instructions) or split (binarized LM data).")
    token_counts: Optional[str] = _opt(None, "Pickled token counts from scripts/token_counts.py (mlm).")
    prompt_template: Optional[str] = _opt(None, "Instruction data: template with {instruction} and {input}; default Alpaca's (or the tokenizer's chat template).")
    # --- models ----------------------------------------------------------------------------
    teacher_name: Optional[str] = _opt(None, "Teacher: hub name or folder. Unset = plain fine-tuning (needs alpha_ce=alpha_mse=alpha_cos=0).")
    student_name: Optional[str] = _opt(None, "Pretrained student: hub name or folder (e.g. from scripts/extract.py).")
    student_config: Optional[str] = _opt(None, "Student config JSON; the student starts from random weights.")
    tokenizer_name: Optional[str] = _opt(None, "Tokenizer: hub name or folder (default: the teacher's, else the student's).")
    student_pretrained_weights: Optional[str] = _opt(None, "Reference flag: a state dict (.pth/.safetensors) loaded into the --student_config student.")
    student_type: Optional[str] = _opt(None, "Model type of a --student_config JSON without 'model_type' (e.g. distilbert, gpt2, roberta).")
    teacher_type: Optional[str] = _opt(None, "Reference flag, informational: the family is read from the config.")
    # --- losses ----------------------------------------------------------------------------
    temperature: float = _opt(2.0, "Softmax temperature T of the soft targets (KL is scaled by T²).")
    alpha_ce: float = _opt(0.5, "Weight of the soft-target KL.")
    alpha_task: float = _opt(0.5, "Weight of the hard-label loss (aliases: --alpha_mlm, --alpha_clm).")
    alpha_mse: float = _opt(0.0, "Weight of the hidden-state MSE.")
    alpha_cos: float = _opt(0.0, "Weight of the hidden-state cosine loss.")
    layer_map: Optional[str] = _opt(None, "Hidden losses: student:teacher layer pairs, e.g. 0:1,1:3,2:5 (default: evenly spread, last to last).")
    hidden_projection: bool = _opt(True, "Learn a linear student->teacher projection when hidden sizes differ.")
    # --- mlm -------------------------------------------------------------------------------
    mlm: bool = _opt(False, "Reference flag: same as --objective mlm.")
    mlm_mask_prop: float = _opt(0.15, "Share of real tokens chosen for prediction.")
    word_mask: float = _opt(0.8, "Chosen tokens replaced by [MASK].")
    word_keep: float = _opt(0.1, "Chosen tokens kept as they are.")
    word_rand: float = _opt(0.1, "Chosen tokens replaced by a random (non-special) token.")
    mlm_smoothing: float = _opt(0.7, "Masking probability ∝ count^(-mlm_smoothing).")
    restrict_ce_to_mask: bool = _opt(False, "Distil only the masked positions (mlm).")
    freeze_pos_embs: bool = _opt(False, "Freeze the student's position embeddings.")
    freeze_token_type_embds: bool = _opt(False, "Freeze the student's token type embeddings.")
    # --- optimisation ----------------------------------------------------------------------
    n_epoch: int = _opt(3, "Epochs over --data_file.")
    max_steps: Optional[int] = _opt(None, "Stop after this many optimizer steps (overrides --n_epoch for the schedule).")
    batch_size: int = _opt(5, "Examples per micro-batch per process.")
    group_by_size: bool = _opt(True, "Length-grouped batches (less padding).")
    gradient_accumulation_steps: Optional[int] = _opt(None, "Micro-batches per optimizer step (default: the objective's: 50 for mlm/clm as the reference, 1 for classification).")
    warmup_prop: float = _opt(0.05, "Share of steps with linear warm-up.")
    weight_decay: float = _opt(0.0, "AdamW weight decay (never on biases and norms).")
    learning_rate: float = _opt(5e-4, "Peak learning rate.")
    adam_epsilon: float = _opt(1e-6, "AdamW epsilon.")
    max_grad_norm: float = _opt(5.0, "Gradient clipping norm.")
    precision: str = _opt("fp32", "Autocast precision; fp16 adds a GradScaler.", choices=("fp32", "bf16", "fp16"))
    fp16: bool = _opt(False, "Reference flag: same as --precision fp16.")
    cache_teacher_logits: bool = _opt(False, "Compute teacher logits once per example and reuse them in later epochs.")
    compile: bool = _opt(False, "torch.compile the student.")
    num_workers: int = _opt(0, "DataLoader worker processes.")
    # --- logging, eval, checkpoints ----------------------------------------------------------
    log_interval: int = _opt(500, "Optimizer steps between metrics lines (and one at each epoch end).")
    eval_interval: Optional[int] = _opt(None, "Optimizer steps between evaluations (and one at each epoch end).")
    eval_batch_size: Optional[int] = _opt(None, "Batch size of evaluation (default: 4 x --batch_size).")
    checkpoint_interval: int = _opt(4000, "Optimizer steps between checkpoints (and one at each epoch end).")
    resume: bool = _opt(False, "Continue from --dump_path/checkpoint/.")
    ddp_timeout_minutes: float = _opt(30.0, "A rank that waits longer than this on the others fails the run.")

    # --- CLI / JSON ------------------------------------------------------------------------
    @classmethod
    def from_cli(cls, argv: Optional[List[str]] = None) -> "DistillConfig":
        """Parse `argv`: `--config FILE.json` first, then flags on top. Raises InputError."""
        args = _build_parser().parse_args(argv)
        values = _task_alias(read_json_object(args.config, "--config")) if args.config else {}
        explicit = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "n_gpu", "local_rank")}
        values.update(_task_alias(explicit))
        return cls.from_dict(values, source="--config" if args.config else "arguments")

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "DistillConfig":
        values = _task_alias(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown option '{unknown[0]}'")
        cfg = cls(**values)
        cfg.normalise()
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    # --- validation ------------------------------------------------------------------------
    def normalise(self) -> None:
        """Fold the reference's spellings into ours."""
        if self.mlm:
            self.objective = "mlm"
        if self.fp16:
            self.precision = "fp16"
        self.mlm = self.objective == "mlm"
        if self.gradient_accumulation_steps is None:
            self.gradient_accumulation_steps = 1 if self.objective == "sequence_classification" else 50
        self.fp16 = self.precision == "fp16"

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise InputError(msg)

        need(self.objective in OBJECTIVE_NAMES, f"--objective: unknown objective '{self.objective}' (choose from {', '.join(OBJECTIVE_NAMES)})")
        need(self.precision in ("fp32", "bf16", "fp16"), f"--precision: unknown precision '{self.precision}'")
        need(self.dump_path, "--dump_path is required")
        need(self.data_file, "--data_file is required")
        alphas = {"alpha_ce": self.alpha_ce, "alpha_task": self.alpha_task, "alpha_mse": self.alpha_mse, "alpha_cos": self.alpha_cos}
        for name, a in alphas.items():
            need(a >= 0, f"--{name} must be >= 0 (got {a})")
        need(sum(alphas.values()) > 0, "--alpha_ce, --alpha_task, --alpha_mse and --alpha_cos are all 0: nothing to train")
        if self.teacher_name is None:
            need(
                self.alpha_ce == self.alpha_mse == self.alpha_cos == 0,
                "--teacher_name is required when --alpha_ce, --alpha_mse or --alpha_cos is > 0",
            )
        need(self.temperature > 0, f"--temperature must be > 0 (got {self.temperature})")
        need((self.student_name is None) != (self.student_config is None), "give exactly one of --student_name and --student_config")
        for name in ("batch_size", "n_epoch", "log_interval", "checkpoint_interval", "max_seq_length"):
            need(getattr(self, name) >= 1, f"--{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("max_steps", "eval_interval", "eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"--{name} must be >= 1 (got {value})")
        need(0 <= self.warmup_prop <= 1, f"--warmup_prop must be in [0, 1] (got {self.warmup_prop})")
        need(self.learning_rate > 0, f"--learning_rate must be > 0 (got {self.learning_rate})")
        if self.objective == "mlm":
            need(0 < self.mlm_mask_prop <= 1, f"--mlm_mask_prop must be in (0, 1] (got {self.mlm_mask_prop})")
            need(
                abs(self.word_mask + self.word_keep + self.word_rand - 1) < 1e-6,
                "--word_mask + --word_keep + --word_rand must sum to 1",
            )
            need(self.token_counts is not None, "--token_counts is required for --objective mlm (make it with scripts/token_counts.py)")
        need(self.layer_map is None or self.alpha_mse + self.alpha_cos > 0, "--layer_map needs --alpha_mse or --alpha_cos > 0")
        if self.cache_teacher_logits:
            need(self.teacher_name is not None, "--cache_teacher_logits needs --teacher_name")
            need(self.alpha_mse == self.alpha_cos == 0, "--cache_teacher_logits caches logits only: it cannot serve --alpha_mse/--alpha_cos")

    @property
    def uses_hidden_states(self) -> bool:
        return self.alpha_mse > 0 or self.alpha_cos > 0


# --- parser ----------------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON file of options; flags given here override it.")
    for f in fields(DistillConfig):
        kw = {"help": f.metadata["help"], "default": None}
        if f.type in (bool, "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _scalar_type(f)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(f"--{f.name}", **kw)
    for alias in ("alpha_mlm", "alpha_clm"):
        parser.add_argument(f"--{alias}", type=float, default=None, help="Alias of --alpha_task.")
    for legacy in ("n_gpu", "local_rank"):  # torchrun sets the environment; kept so old commands parse
        parser.add_argument(f"--{legacy}", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _scalar_type(f):
    t = f.type if not isinstance(f.type, str) else eval(f.type)  # noqa: S307 - our own annotations
    for candidate in (int, float, str):
        if t is candidate or t == Optional[candidate]:
            return candidate
    return str


def _task_alias(values: dict) -> dict:
    """The reference's --alpha_mlm / --alpha_clm are --alpha_task."""
    values = dict(values)
    for alias in ("alpha_mlm", "alpha_clm"):
        if alias in values:
            values["alpha_task"] = values.pop(alias)
    return values


def read_json_object(path: str, flag: str) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"{flag}: no such file '{path}'")
    try:
        with open(path) as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{flag}: '{path}' is not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise InputError(f"{flag}: '{path}' must hold a JSON object")
    return values
