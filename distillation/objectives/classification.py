"""Sequence classification: distil a fine-tuned classifier's class distribution.

The generalisation of the reference's run_squad_w_distillation.py to a classification head:
one distilled row per example (its [N, num_labels] logits), hard-label cross-entropy as the
task loss, loss / accuracy / macro-F1 / agreement with the teacher at evaluation.

Label names come from --label_names, else the teacher's id2label when it names its labels,
else the data's string labels sorted; they become the student's id2label, so `pipeline()`
prints names.
"""

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from distillation.data.text_classification import UNLABELLED, LabelSpace, collate_classification, load_text_classification
from distillation.errors import InputError
from distillation.losses import cross_entropy_sum
from distillation.objectives.base import Objective


class SequenceClassification(Objective):
    name = "sequence_classification"
    task_loss_name = "task"
    auto_model_class = AutoModelForSequenceClassification
    deterministic_inputs = True
    metrics = {"loss": "min", "accuracy": "max", "macro_f1": "max"}
    pipeline_task = "text-classification"
    lora_trains_head = True

    def __init__(self, cfg, tokenizer, teacher_config=None):
        super().__init__(cfg, tokenizer, teacher_config)
        self.space = _label_space(cfg.label_name_list, teacher_config)

    def load_dataset(self, path, flag):
        """--data_file (with --unlabelled_ok its rows may lack labels; --unlabelled_file's texts
        follow it) or held-out data, which must be labelled."""
        training = flag == "--data_file"
        ds = self._read(path, flag, self.cfg.label_column, training and self.cfg.unlabelled_ok)
        # The evaluation data must use the training data's labels.
        self.space = LabelSpace(ds.label2id, ds.num_labels, f"the training data '{path}'" if not self.space.source else self.space.source)
        if training and self.cfg.unlabelled_file:
            ds = ds.extended(self._read(self.cfg.unlabelled_file, "--unlabelled_file", None, True))
        return ds

    def _read(self, path, flag, label_column, unlabelled_ok):
        return load_text_classification(path, flag, self.tokenizer, self.cfg.text_column, label_column, self.cfg.max_seq_length,
                                        self.cfg.text_pair_column, self.space, unlabelled_ok, self.route_column)

    def collate(self, examples):
        return collate_classification(examples, self.tokenizer.pad_token_id or 0)

    def student_config_overrides(self, train_dataset):
        overrides = {"num_labels": train_dataset.num_labels}
        if train_dataset.label2id:
            overrides["label2id"] = dict(train_dataset.label2id)
            overrides["id2label"] = {i: name for name, i in train_dataset.label2id.items()}
        return overrides

    def check_models(self, teacher, student, train_dataset):
        n_student = student.config.num_labels
        if teacher is not None and teacher.config.num_labels != n_student:
            raise InputError(
                f"--teacher_name has num_labels={teacher.config.num_labels} but the student has "
                f"num_labels={n_student}: they must predict the same classes"
            )
        if train_dataset.num_labels > n_student:
            raise InputError(
                f"--data_file: label {train_dataset.num_labels - 1} is outside the student's "
                f"num_labels={n_student} (--label_column '{self.cfg.label_column}')"
            )

    def counts(self, batch):
        n = batch["labels"].new_tensor(batch["labels"].shape[0])
        # The task loss is a mean over labelled rows only: an unlabelled row (UNLABELLED) adds 0 to it.
        return {"task": (batch["labels"] != UNLABELLED).sum(), "rows": n, "tokens": batch["attention_mask"].sum()}

    def task_loss(self, student_logits, batch):
        return cross_entropy_sum(student_logits, batch["labels"], ignore_index=UNLABELLED)

    def distill_rows(self, student_logits, teacher_logits, batch):
        return student_logits, teacher_logits  # [B, num_labels]: one row per example

    def eval_batch(self, student_logits, teacher_logits, batch):
        labels = batch["labels"]
        stats = {"pred": student_logits.argmax(-1).cpu(), "label": labels.cpu(),
                 "nll": F.cross_entropy(student_logits.float(), labels, reduction="none").cpu()}
        if teacher_logits is not None:
            stats["teacher_pred"] = teacher_logits.argmax(-1).cpu()
            stats["teacher_nll"] = F.cross_entropy(teacher_logits.float(), labels, reduction="none").cpu()
        return stats

    def eval_metrics(self, stats: Dict[str, torch.Tensor]) -> Dict[str, float]:
        label = stats["label"]
        metrics = {"examples": len(label)}
        for prefix in ("", "teacher_"):
            if f"{prefix}pred" in stats:
                pred = stats[f"{prefix}pred"]
                metrics[f"{prefix}loss"] = stats[f"{prefix}nll"].mean().item()
                metrics[f"{prefix}accuracy"] = accuracy(pred, label)
                metrics[f"{prefix}macro_f1"] = macro_f1(pred, label)
                metrics[f"{prefix}predicted_classes"] = len(torch.unique(pred))
        if "teacher_pred" in stats:
            metrics["teacher_agreement"] = accuracy(stats["pred"], stats["teacher_pred"])
        return metrics


def accuracy(pred: torch.Tensor, label: torch.Tensor) -> float:
    return (pred == label).float().mean().item()


def macro_f1(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for c in torch.unique(torch.cat([pred, label])):
        tp = ((pred == c) & (label == c)).sum().item()
        fp = ((pred == c) & (label != c)).sum().item()
        fn = ((pred != c) & (label == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def _label_space(names, teacher_config) -> LabelSpace:
    """The labels the data must use: --label_names, else the teacher's (named or only counted)."""
    teacher_names = _named_labels(teacher_config) if teacher_config is not None else None
    if names:
        if len(set(names)) != len(names) or not all(names):
            raise InputError(f"--label_names: give each name once, none empty (got {','.join(names)})")
        if teacher_config is not None and teacher_config.num_labels != len(names):
            raise InputError(f"--label_names: {len(names)} names, but the teacher predicts {teacher_config.num_labels} labels")
        if teacher_names and list(teacher_names) != names:
            raise InputError(f"--label_names {','.join(names)}: the teacher names its labels {','.join(teacher_names)} (in id order)")
        return LabelSpace({name: i for i, name in enumerate(names)}, len(names), f"--label_names ({len(names)} names)")
    if teacher_config is None:
        return LabelSpace()
    return LabelSpace(teacher_names, teacher_config.num_labels, f"the teacher (num_labels={teacher_config.num_labels})")


def _named_labels(config) -> Optional[Dict[str, int]]:
    """The config's label2id, in id order, when its labels have real names (not LABEL_0, LABEL_1...)."""
    id2label = {int(i): name for i, name in (config.id2label or {}).items()}
    if not id2label or all(name == f"LABEL_{i}" for i, name in id2label.items()):
        return None
    return {id2label[i]: i for i in sorted(id2label)}
