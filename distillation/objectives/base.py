"""The interface every objective implements; the Distiller only ever talks to this.

An objective owns everything task-specific: reading its data, padding a batch, turning a
batch into model inputs (e.g. MLM masking), which logit rows are distilled, the hard-label
loss and the evaluation metrics. Losses are returned as *sums*; `counts` says what each sum
is divided by, so the Distiller can normalise by the global count of the optimizer step.

Batch dicts hold tensors only. Every collate must return at least
`input_ids` [B, S], `attention_mask` [B, S] and `index` [B] (dataset positions, used by the
teacher-logit cache).
"""

from abc import ABC, abstractmethod
from typing import Dict, Optional, Tuple

import torch
from torch.utils.data import Dataset

from distillation.config import DistillConfig
from distillation.errors import InputError

Batch = Dict[str, torch.Tensor]


class Objective(ABC):
    name: str = ""
    # Metrics key of the hard-label loss: metrics.jsonl gets `loss_{task_loss_name}`.
    task_loss_name: str = "task"
    # The transformers Auto* class that loads both teacher and student.
    auto_model_class = None
    # True when a batch's inputs are a pure function of its examples, so teacher logits
    # may be computed once per example and reused (--cache_teacher_logits).
    deterministic_inputs: bool = False
    # Why --cache_teacher_logits is refused when deterministic_inputs is False.
    cache_refusal: str = "this objective cannot cache teacher logits"
    # The student's evaluation metrics --save_best_metric may name, and which way is better.
    metrics: Dict[str, str] = {}
    # The transformers pipeline() task of the saved student (named in its model card).
    pipeline_task: Optional[str] = None
    # Logit columns that are distilled and scored: language models use the first len(tokenizer)
    # (a padded vocabulary's extra rows mean nothing); None: all (classification's labels).
    columns: Optional[int] = None
    # --lora_r: whether the task head (the parameters outside the base model) trains beside the
    # adapters: a classifier's is small and task-specific; an LM head is the vocabulary, frozen.
    lora_trains_head: bool = False
    # --teacher_column: {route: teacher index} of --teachers, set by the pipeline before any
    # data is read (the datasets keep each example's teacher as `routes`); None: one teacher, or mixed.
    routes: Optional[Dict[str, int]] = None

    def __init__(self, cfg: DistillConfig, tokenizer, teacher_config=None):
        """`teacher_config`: the teacher's config (None without a teacher), for what it fixes (e.g. labels)."""
        self.cfg = cfg
        self.tokenizer = tokenizer

    # --- data -----------------------------------------------------------------------------
    @property
    def route_column(self) -> Optional[tuple]:
        """(--teacher_column, {route: teacher}) for a loader of records, or None."""
        return (self.cfg.teacher_column, self.routes) if self.routes is not None else None

    def no_routes(self, path: str, flag: str) -> None:
        """Data without columns cannot name each example's teacher."""
        if self.routes is not None:
            raise InputError(f"--teacher_column: {flag} '{path}' has no columns (token blocks or sequences); give records "
                             "(jsonl, json, csv, tsv) with that column, or mix the teachers (drop --teacher_column)")

    @abstractmethod
    def load_dataset(self, path: str, flag: str) -> Dataset:
        """Read `path` (given by CLI flag `flag`, named in errors). The dataset must expose
        `lengths` (list of token counts) for length-grouped batching."""

    @abstractmethod
    def collate(self, examples: list) -> Batch:
        """Pad a list of dataset items to the longest one (dynamic padding)."""

    # --- models ---------------------------------------------------------------------------
    def student_config_overrides(self, train_dataset: Dataset) -> dict:
        """Config fields the student must carry (e.g. num_labels, id2label)."""
        return {}

    def check_models(self, teacher, student, train_dataset: Dataset) -> None:
        """Raise InputError when the models cannot serve this data (beyond vocab checks)."""

    # --- one training step ------------------------------------------------------------------
    def prepare_batch(self, batch: Batch, generator: Optional[torch.Generator] = None) -> Batch:
        """Batch already on the device -> batch with `labels` (e.g. MLM masking).

        Randomness draws from `generator` when given (evaluation: the same inputs every time)
        and from the global RNG otherwise (training: saved in checkpoints for exact resume)."""
        return batch

    def model_inputs(self, batch: Batch) -> Batch:
        """Tensors fed to both models (the Distiller drops those a model does not accept)."""
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}

    def with_answers(self, batch: Batch, examples: list) -> Batch:
        """The batch of `examples` ({"input_ids": prompt + the student's own answer, "prompt_len",
        "index", "ended"}: on-policy samples of `batch`'s prompts) in place of `batch`."""
        return self.collate(examples)

    def teacher_batch(self, batch: Batch) -> Batch:
        """The batch as the teacher reads it: the student's (a teacher with another tokenizer
        reads its own ids, labels and prompt lengths: objectives/clm_cross.py)."""
        return batch

    @abstractmethod
    def counts(self, batch: Batch) -> Dict[str, torch.Tensor]:
        """What each loss sum of this batch is divided by, summed over the whole step:
        `task` (labelled rows/tokens), `rows` (distilled rows), `tokens` (hidden-loss positions)."""

    @abstractmethod
    def task_loss(self, student_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Sum of the hard-label cross-entropy over this batch (scalar, fp32)."""

    @abstractmethod
    def distill_rows(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The [N, C] student and teacher rows that the soft-target KL compares."""

    def hidden_mask(self, batch: Batch) -> torch.Tensor:
        """[B, S] positions that count for the hidden-state MSE/cosine losses."""
        return batch["attention_mask"]

    # --- evaluation -------------------------------------------------------------------------
    @abstractmethod
    def eval_batch(
        self, student_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor], batch: Batch
    ) -> Dict[str, torch.Tensor]:
        """Per-batch statistics as 1-D CPU tensors; the Distiller concatenates them over
        batches and ranks and hands the result to `eval_metrics`."""

    @abstractmethod
    def eval_metrics(self, stats: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Metrics (without the `eval_` prefix) from the concatenated statistics."""
