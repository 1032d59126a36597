"""One dataclass holding every option of a run: defaults, the reference's flags, validation.

`python scripts/train.py [--config FILE.json] [--flag value ...]`: the file gives values, flags
override it, and both take the same names (`distillation/cli/options.py` builds the parser).
A `None` field is "not given": `resolve()` fills it from the objective's defaults
(`OBJECTIVE_DEFAULTS`), so `parameters.json` always holds the values the run used.

Reference compatibility (shared/reference.md): a flag with a reference name means what it meant
there, or the run stops with exit code 2 saying what differs. `--alpha_mlm` / `--alpha_clm`
weigh the MLM / CLM loss (the one of the other objective must be 0), `--alpha_mse` is the MSE of
the logits, `--alpha_cos` compares the last hidden layers unless `--layer_map` says otherwise,
`--log_interval` / `--checkpoint_interval` count micro-batches (the reference's iterations).
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from distillation.config_checks import OBJECTIVE_NAMES, validate
from distillation.config_types import check_types
from distillation.errors import InputError
from distillation.losses import DIVERGENCES


# Defaults that differ by objective, in the order of OBJECTIVE_NAMES. mlm keeps the reference's
# DistilBERT recipe (its README command: alpha_ce 5, alpha_mlm 2, alpha_cos 1, and train.py's
# optimisation defaults). sequence_classification's were chosen by measurement (README,
# "Defaults"); clm's suit instruction and text data of thousands of examples.
OBJECTIVE_DEFAULTS = {
    "learning_rate": (2e-4, 5e-4, 3e-4),
    "batch_size": (32, 5, 8),
    "gradient_accumulation_steps": (1, 50, 1),
    "warmup_prop": (0.1, 0.05, 0.05),
    "weight_decay": (0.01, 0.0, 0.01),
    "max_grad_norm": (1.0, 5.0, 1.0),
    "alpha_ce": (0.5, 5.0, 0.5),
    "alpha_task": (0.5, 2.0, 0.5),
    "alpha_cos": (0.0, 1.0, 0.0),
    "log_interval": (50, 500, 50),
}
# Unless given, --max_seq_length is this, lowered to what both models accept (models.sequence_limit).
DEFAULT_MAX_SEQ_LENGTH = {"sequence_classification": 512, "mlm": 512, "clm": 1024}
TEACHER_LOSSES = ("alpha_ce", "alpha_cos")  # the per-objective weights that need a teacher
TASK_ALPHA = {"mlm": "alpha_mlm", "clm": "alpha_clm"}  # the reference's name of each task loss weight
APEX_LEVELS = ("O0", "O1", "O2", "O3")
PRECISIONS = ("fp32", "bf16", "fp16")  # --precision and --teacher_dtype


def _opt(default, help, section, **meta):
    """A field; `shown` is what --help prints as its default when `default` alone says too little."""
    return field(default=default, metadata={"help": help, "section": section, **meta})


@dataclass
class DistillConfig:
    # --- run -----------------------------------------------------------------------------------
    dump_path: Optional[str] = _opt(None, "Run folder (parameters.json, metrics.jsonl, log/, checkpoint/, final/).", "run", shown="required")
    force: bool = _opt(False, "Overwrite an existing --dump_path.", "run")
    objective: Optional[str] = _opt(None, "What is distilled.", "run", choices=OBJECTIVE_NAMES,
                                    shown="mlm with --mlm; clm for a reference command (--student_type/--teacher_type) without --mlm, "
                                          "as the reference; else sequence_classification")
    seed: int = _opt(56, "Seed of every random number generator.", "run")
    resume: bool = _opt(False, "Continue from --dump_path/checkpoint/.", "run")
    # --- data ----------------------------------------------------------------------------------
    data_file: Optional[str] = _opt(None, "Training data: jsonl/json/csv/tsv (classification, instructions), a .txt file (clm) "
                                    "or a binarized dataset (mlm/clm).", "data", shown="required")
    eval_file: Optional[str] = _opt(None, "Held-out data in the same format, evaluated every --eval_interval and at each epoch end.",
                                    "data", shown="none")
    validation_split: float = _opt(0.0, "Hold out this share of --data_file (seeded) as the evaluation set, instead of --eval_file.",
                                   "data", shown="0: none")
    text_column: str = _opt("text", "Column holding the text (classification).", "data")
    text_pair_column: Optional[str] = _opt(None, "Column holding the second text of a pair (classification).", "data", shown="none: single texts")
    label_column: str = _opt("label", "Column holding the label, an integer id or a string name (classification).", "data")
    unlabelled_ok: bool = _opt(False, "Classification: rows of --data_file without a label (column absent or null) train on the "
                               "teacher's soft targets only; without it a missing label is an error.", "data")
    unlabelled_file: Optional[str] = _opt(None, "Classification: more training texts (--text_column; any label ignored) that train on the "
                                          "teacher's soft targets only.", "data", shown="none")
    label_names: Optional[str] = _opt(None, "Names of the labels in id order, e.g. negative,positive (classification): they go into the "
                                      "student's id2label; string labels in the data must be among them.", "data",
                                      shown="the teacher's label names, else the data's string labels sorted, else none")
    max_seq_length: Optional[int] = _opt(None, "Longer inputs are truncated (classification, instructions) or cut into pieces "
                                         "(text, binarized data); at most what both models accept.", "data",
                                         shown="512 (clm: 1024) or less, what both models accept")
    token_counts: Optional[str] = _opt(None, "Token counts from scripts/token_counts.py (mlm's masking probabilities).", "data",
                                       shown="required for mlm")
    prompt_template: Optional[str] = _opt(None, "Instruction data: a template with {instruction} and {input}.", "data",
                                          shown="the tokenizer's chat template, else Alpaca's")
    # --- models --------------------------------------------------------------------------------
    teacher_name: Optional[str] = _opt(None, "Teacher: hub name or folder, with its trained head for the objective.", "models",
                                       shown="none: plain training on the labels (needs --alpha_ce 0 and no other teacher loss)")
    teacher_logits: Optional[str] = _opt(None, "clm or classification: train from a cache of the teacher's outputs made by "
                                         "scripts/cache_teacher.py (a folder), without loading the teacher.", "models",
                                         shown="none: the teacher runs in the loop")
    teacher_url: Optional[str] = _opt(None, "clm: the teacher on its own server, an OpenAI-compatible one that returns prompt "
                                      "log-probabilities (vLLM's prompt_logprobs), e.g. http://127.0.0.1:8000; training learns its "
                                      "top --teacher_top_k tokens and the rest's mass at each position (distillation/teachers/served.py).",
                                      "models", shown="none: the teacher runs in the loop")
    teachers: Optional[str] = _opt(None, "Several teachers: a JSON file listing them, [{\"teacher\": model, URL or cache folder, "
                                   "\"route\": value, \"weight\": w}, ...]; routed by --teacher_column, else their distributions mixed "
                                   "(distillation/teachers/several.py).", "models", shown="none: one teacher")
    teacher_column: Optional[str] = _opt(None, "--teachers: the data column naming each example's teacher (its \"route\"); each "
                                         "example is distilled from that teacher only.", "data", shown="none: the teachers are mixed")
    teacher_served_model: Optional[str] = _opt(None, "--teacher_url: the served model's name.", "models",
                                               shown="the server's only model")
    teacher_top_k: int = _opt(20, "--teacher_url: the teacher's most likely tokens per position (at most the server's "
                              "--max-logprobs).", "models")
    teacher_timeout: float = _opt(120.0, "--teacher_url: seconds one request may take before it is retried.", "models")
    teacher_retries: int = _opt(5, "--teacher_url: retries of a failed request (with backoff) before the run stops.", "models")
    teacher_prefetch: bool = _opt(True, "--teacher_url: ask for the next step's targets while the student computes this one "
                                  "(--no-teacher_prefetch: ask at each step's start and wait).", "models")
    teacher_dtype: Optional[str] = _opt(None, "The dtype the frozen teacher is loaded and held in (it has no optimizer: its "
                                        "weights only ever meet autocast's compute).", "models", choices=PRECISIONS,
                                        shown="--precision's: bf16 or fp16 under those, else fp32")
    lora_r: int = _opt(0, "Train LoRA adapters of this rank in the student (the peft extra) instead of all its weights; final/ "
                       "merges them, adapter/ beside it keeps them.", "models", shown="0: every weight trains")
    lora_alpha: Optional[float] = _opt(None, "LoRA's alpha: the adapters' update is scaled by alpha / r.", "models", shown="2 x --lora_r")
    lora_dropout: float = _opt(0.0, "Dropout on the adapters' input.", "models")
    lora_target_modules: Optional[str] = _opt(None, "Comma-separated names (or name endings) of the layers to adapt.", "models",
                                              shown="every nn.Linear in the student's blocks: attention and MLP projections")
    student_name: Optional[str] = _opt(None, "Pretrained student: hub name or folder (e.g. from scripts/extract.py).", "models",
                                       shown="none: give this or --student_config")
    student_config: Optional[str] = _opt(None, "Student config (a JSON file or a folder with config.json); the student starts from "
                                         "random weights.", "models", shown="none: give this or --student_name")
    tokenizer_name: Optional[str] = _opt(None, "Tokenizer: hub name or folder.", "models", shown="the teacher's, else the student's")
    teacher_tokenizer: Optional[str] = _opt(None, "clm: the teacher's tokenizer (hub name or folder), when it is not the student's: "
                                            "each text is read by both and their positions aligned by character "
                                            "(distillation/objectives/clm_cross.py).", "models",
                                            shown="the teacher's own; a --student_name whose own tokenizer differs makes the run "
                                            "cross-tokenizer too")
    student_pretrained_weights: Optional[str] = _opt(None, "Reference flag: weights (.pth/.bin/.safetensors file or a folder) for the "
                                                     "--student_config student; every tensor must be there.", "models", shown="none")
    student_type: Optional[str] = _opt(None, "Reference flag: the student's model_type (distilbert, roberta, gpt2...); needed when "
                                       "--student_config has no model_type, checked against it otherwise.", "models", shown="the config's")
    teacher_type: Optional[str] = _opt(None, "Reference flag: the teacher's model_type (bert, roberta, gpt2...); checked against it.",
                                       "models", shown="the config's")
    initializer_range: float = _opt(0.02, "Reference flag, parsed but never used there: it changes nothing here either "
                                    "(a random student's init range is its config's).", "models")
    # --- losses --------------------------------------------------------------------------------
    temperature: float = _opt(2.0, "Softmax temperature T of the soft targets (the divergence is scaled by T²).", "losses")
    divergence: Optional[str] = _opt(None, "What --alpha_ce weighs between the softened distributions: forward_kl (KL(teacher||"
                                     "student), the reference's), reverse_kl, jsd (GKD's generalised Jensen-Shannon), skew_kl "
                                     "(DistiLLM's), tvd.", "losses", choices=tuple(DIVERGENCES),
                                     shown="forward_kl; reverse_kl with --on_policy_fraction > 0 (distillation/on_policy.py says why)")
    on_policy_fraction: float = _opt(0.0, "clm instruction data: the share of optimizer steps on which the student answers the "
                                     "prompts itself and learns the teacher's distribution over its own tokens (GKD's λ).", "losses")
    generation_temperature: float = _opt(1.0, "Temperature of the student's samples (--on_policy_fraction).", "losses")
    max_new_tokens: int = _opt(128, "Longest answer the student samples (--on_policy_fraction), within --max_seq_length.", "losses")
    divergence_beta: Optional[float] = _opt(None, "β of --divergence jsd (the teacher's weight in the mixture; 0 = forward KL, "
                                            "1 = reverse KL) and skew_kl (the skew; 0 = forward KL).", "losses",
                                            shown="0.5 for jsd, 0.1 for skew_kl")
    cross_tokenizer: str = _opt("uld", "A teacher with another tokenizer: aligned (where positions end at one character, the "
                                "divergence with each teacher token's probability given to the student token spelt alike, else the "
                                "first of its text; ULD elsewhere) or uld (Universal Logit Distillation everywhere: sorted "
                                "probabilities, no mapping).", "losses", choices=("aligned", "uld"))
    loss_chunk_rows: int = _opt(0, "clm: compute CE and --divergence over this many target rows at a time from the final hidden "
                                "states, so the [tokens, vocab] logits never exist at once (0 = dense, from full logits).", "losses")
    alpha_ce: Optional[float] = _opt(None, "Weight of the soft-target term (--divergence, KL by default).", "losses",
                                     also="0 without --teacher_name")
    alpha_task: Optional[float] = _opt(None, "Weight of the hard-label loss (classification CE, MLM or CLM).", "losses")
    alpha_mlm: Optional[float] = _opt(None, "Reference flag: weight of the MLM loss (mlm only; 0 for other objectives).", "losses",
                                      shown="--alpha_task")
    alpha_clm: Optional[float] = _opt(None, "Reference flag: weight of the CLM loss (clm only; 0 for other objectives).", "losses",
                                      shown="--alpha_task")
    alpha_mse: float = _opt(0.0, "Weight of the MSE between student and teacher logits on the distilled rows (the reference's).", "losses")
    alpha_hidden_mse: float = _opt(0.0, "Weight of the MSE between hidden states (--layer_map), projected when widths differ.", "losses")
    alpha_cos: Optional[float] = _opt(None, "Weight of the cosine loss between hidden states (--layer_map).", "losses",
                                      also="0 without --teacher_name")
    layer_map: str = _opt("last", "Hidden losses compare: 'last' (the last layers, as the reference), 'uniform' (every student layer with "
                          "an evenly spread teacher layer, last with last) or student:teacher pairs such as 0:1,1:3,2:5.", "losses")
    hidden_projection: bool = _opt(True, "Learn a linear student->teacher projection when hidden sizes differ.", "losses")
    # --- mlm -----------------------------------------------------------------------------------
    mlm: bool = _opt(False, "Reference flag: same as --objective mlm.", "mlm")
    mlm_mask_prop: float = _opt(0.15, "Share of real tokens chosen for prediction.", "mlm")
    word_mask: float = _opt(0.8, "Chosen tokens replaced by [MASK].", "mlm")
    word_keep: float = _opt(0.1, "Chosen tokens kept as they are.", "mlm")
    word_rand: float = _opt(0.1, "Chosen tokens replaced by a random (non-special) token.", "mlm")
    mlm_smoothing: float = _opt(0.7, "Masking probability ∝ count^(-mlm_smoothing).", "mlm")
    restrict_ce_to_mask: bool = _opt(False, "Distil only the masked positions (mlm).", "mlm")
    freeze_pos_embs: bool = _opt(False, "Freeze the student's position embeddings.", "mlm")
    freeze_token_type_embds: bool = _opt(False, "Freeze the student's token type embeddings.", "mlm")
    # --- optimisation --------------------------------------------------------------------------
    n_epoch: int = _opt(3, "Epochs over --data_file.", "optimisation")
    max_steps: int = _opt(0, "Stop after this many optimizer steps (the schedule then spans them).", "optimisation", shown="0: --n_epoch decides")
    batch_size: Optional[int] = _opt(None, "Examples per micro-batch per process.", "optimisation")
    gradient_accumulation_steps: Optional[int] = _opt(None, "Micro-batches per optimizer step.", "optimisation")
    group_by_size: bool = _opt(True, "Length-grouped batches (less padding). Write --no-group_by_size to turn it off: the reference's "
                               "bare --group_by_size turned it OFF and is refused here.", "optimisation")
    learning_rate: Optional[float] = _opt(None, "Peak learning rate (linear warm-up, then linear decay to 0).", "optimisation")
    warmup_prop: Optional[float] = _opt(None, "Share of the optimizer steps with linear warm-up.", "optimisation")
    weight_decay: Optional[float] = _opt(None, "AdamW weight decay (never on biases and norms).", "optimisation")
    adam_epsilon: float = _opt(1e-6, "AdamW epsilon.", "optimisation")
    max_grad_norm: Optional[float] = _opt(None, "Gradient clipping norm.", "optimisation")
    precision: str = _opt("fp32", "Autocast precision; fp16 adds a GradScaler.", "optimisation", choices=PRECISIONS)
    fp16: bool = _opt(False, "Reference flag: same as --precision fp16.", "optimisation")
    fp16_opt_level: str = _opt("O1", "Reference flag (apex). torch.amp's fp16 autocast is apex's O1, which is what runs; "
                               "O0, O2 and O3 are refused with --fp16.", "optimisation", choices=APEX_LEVELS)
    cache_teacher_logits: Optional[bool] = _opt(None, "Compute the teacher's logits once per example and reuse them in later epochs.",
                                                "optimisation", shown="on for sequence_classification without hidden losses; "
                                                "mlm and clm cannot")
    compile: bool = _opt(False, "torch.compile the student.", "optimisation")
    strategy: str = _opt("ddp", "Under torchrun: ddp (each process holds the whole student, teacher and optimizer) or fsdp (FSDP2: "
                         "parameters, gradients and AdamW state sharded over the processes, per transformer block).",
                         "optimisation", choices=("ddp", "fsdp"))
    replicate_teacher: bool = _opt(False, "fsdp: keep a whole teacher on every process (faster when it fits) instead of sharding "
                                   "it; with --cache_teacher_logits only a whole teacher caches.", "optimisation")
    sharded_loading: bool = _opt(True, "fsdp on several processes: build both models on the meta device and read each process's "
                                 "shards from their safetensors files, so no process holds a whole model (--no-sharded_loading: "
                                 "load each whole, then shard).", "optimisation")
    gradient_checkpointing: bool = _opt(False, "Recompute the student's activations in backward (the model's own "
                                        "gradient_checkpointing_enable): less memory, ~1/3 more compute.", "optimisation")
    num_workers: int = _opt(0, "DataLoader worker processes.", "optimisation")
    # --- reporting, evaluation, saving ------------------------------------------------------------
    log_interval: Optional[int] = _opt(None, "Micro-batches (the reference's iterations) between metrics lines; one at each epoch end too.",
                                       "reporting")
    eval_interval: int = _opt(0, "Micro-batches between evaluations.", "reporting", shown="0: at each epoch end only")
    eval_batch_size: Optional[int] = _opt(None, "Batch size of evaluation.", "reporting", shown="2 x --batch_size")
    eval_generate: int = _opt(0, "clm: at each evaluation the student answers the first N held-out prompts (seeded) and the run "
                              "reports the teacher's NLL of those answers, their length and share ending in EOS.", "reporting")
    save_best_metric: Optional[str] = _opt(None, "Keep the student of the best evaluation in best/, by this metric (eval_accuracy, "
                                           "eval_loss, eval_macro_f1, eval_perplexity...: losses and perplexity lower, others higher).",
                                           "reporting", shown="none: no best/")
    early_stopping_patience: int = _opt(0, "Stop after this many evaluations without a better --save_best_metric.", "reporting",
                                        shown="0: never")
    save_strategy: str = _opt("no", "Also keep loadable student folders: at each epoch end (epoch-N/) or every --save_steps optimizer "
                              "steps (step-N/).", "reporting", choices=("no", "epoch", "steps"))
    save_steps: int = _opt(500, "Optimizer steps between step-N/ folders (--save_strategy steps).", "reporting")
    save_total_limit: int = _opt(0, "Keep only the newest this-many epoch-N/ or step-N/ folders.", "reporting", shown="0: keep all")
    checkpoint_interval: int = _opt(4000, "Micro-batches (the reference's iterations) between --resume checkpoints; one at each epoch "
                                    "end too.", "reporting")
    ddp_timeout_minutes: float = _opt(30.0, "A rank that waits longer than this on the others fails the run.", "reporting")
    n_gpu: Optional[int] = _opt(None, "Reference flag: 0 trains on the CPU; N >= 1 must equal the processes torchrun starts on each "
                                "node (--nproc_per_node).", "reporting", shown="torchrun's processes")
    local_rank: Optional[int] = _opt(None, "Reference flag, accepted and ignored: torchrun's LOCAL_RANK decides.", "reporting",
                                     shown="torchrun's")

    def __post_init__(self):
        # option -> what distil() was given for an input it staged in a temporary folder (api.py):
        # the run reads the folder, its files name the input (the folder is gone after the call).
        self.given_as = {}

    def shown(self, option: str):
        """`option` as the run's files name it: parameters.json, model cards, adapter_config.json."""
        return self.given_as.get(option, getattr(self, option))

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "DistillConfig":
        """The config of `values` (option name -> value, None for unset), checked, resolved and
        validated; `source` names them in errors. Raises InputError."""
        check_types(cls, values, source)
        cfg = cls(**values)
        cfg.resolve()
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({**self.to_dict(), **self.given_as}, f, indent=2, sort_keys=True)

    # --- resolution ------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Fold the reference's spellings into ours and fill every unset field from the defaults."""
        self.objective = self._resolve_objective()
        self.mlm = self.objective == "mlm"
        if self.fp16:
            self.precision = "fp16"
        self.fp16 = self.precision == "fp16"
        self._resolve_task_alpha()
        column = OBJECTIVE_NAMES.index(self.objective)
        if not self.has_teacher:  # nothing to distil: teacher losses default to 0
            for name in TEACHER_LOSSES:
                if getattr(self, name) is None:
                    setattr(self, name, 0.0)
        self.defaulted = [name for name in OBJECTIVE_DEFAULTS if getattr(self, name) is None]  # for the run's header
        for name in self.defaulted:
            setattr(self, name, OBJECTIVE_DEFAULTS[name][column])
        for name in TASK_ALPHA.values():  # parameters.json reads back to the same run
            setattr(self, name, self.alpha_task if name == TASK_ALPHA.get(self.objective) else 0.0)
        if self.divergence is None:
            self.divergence = "reverse_kl" if self.on_policy_fraction > 0 else "forward_kl"
        if self.divergence_beta is None and self.divergence in DIVERGENCES:
            self.divergence_beta = DIVERGENCES[self.divergence][1]
        if self.eval_batch_size is None:
            self.eval_batch_size = 2 * self.batch_size
        if self.teacher_dtype is None and (self.teacher_name or self.teachers) is not None:
            self.teacher_dtype = self.precision
        if self.lora_alpha is None and self.lora_r:
            self.lora_alpha = 2.0 * self.lora_r
        if self.cache_teacher_logits is None:
            self.cache_teacher_logits = (
                self.objective == "sequence_classification" and (self.teacher_name or self.teachers) is not None
                and not self.uses_hidden_states
            )
        if self.save_best_metric and not self.save_best_metric.startswith("eval_"):
            self.save_best_metric = "eval_" + self.save_best_metric

    def _resolve_objective(self) -> str:
        if self.mlm and self.objective not in (None, "mlm"):
            raise InputError(f"--mlm asks for the MLM objective but --objective is '{self.objective}': give one of them")
        if self.objective is not None:
            return self.objective
        if self.mlm:
            return "mlm"
        if self.student_type or self.teacher_type:
            return "clm"  # the reference: without --mlm it trains a causal LM
        return "sequence_classification"

    def _resolve_task_alpha(self) -> None:
        """--alpha_mlm / --alpha_clm are the task weight of their own objective only (the reference
        checks that the other one is 0); --alpha_task is ours, for every objective."""
        own = TASK_ALPHA.get(self.objective)
        for name in TASK_ALPHA.values():
            value = getattr(self, name)
            if name != own and value not in (None, 0.0):
                loss = name.removeprefix("alpha_").upper()
                why = "; the reference requires --alpha_clm 0.0 with --mlm" if name == "alpha_clm" and own == "alpha_mlm" else ""
                raise InputError(f"--{name} {value} weighs the {loss} loss, which --objective {self.objective} does not have: "
                                 f"set it to 0 (this objective's task loss weight is --{own or 'alpha_task'}{why})")
        if own is not None and getattr(self, own) is not None:
            if self.alpha_task is not None and self.alpha_task != getattr(self, own):
                raise InputError(f"--{own} {getattr(self, own)} and --alpha_task {self.alpha_task} both weigh the "
                                 f"{own.removeprefix('alpha_').upper()} loss: give one of them")
            self.alpha_task = getattr(self, own)

    # --- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        validate(self)  # config_checks.py

    @property
    def has_teacher(self) -> bool:
        return any(x is not None for x in (self.teacher_name, self.teacher_logits, self.teacher_url, self.teachers))

    @property
    def uses_hidden_states(self) -> bool:
        return self.alpha_hidden_mse > 0 or self.alpha_cos > 0

    @property
    def label_name_list(self):
        return [n.strip() for n in self.label_names.split(",")] if self.label_names else None


def read_json_object(path: str, flag: str) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"{flag}: no such file '{path}'")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{flag}: '{path}' is not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise InputError(f"{flag}: '{path}' must hold a JSON object")
    return values
