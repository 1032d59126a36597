"""Sequence classification: distil a fine-tuned classifier's class distribution.

The generalisation of the reference's run_squad_w_distillation.py to a classification head:
one distilled row per example (its [N, num_labels] logits), hard-label cross-entropy as the
task loss, accuracy / macro-F1 / agreement with the teacher at evaluation.
"""

from typing import Dict, Optional

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from distillation.data.text_classification import collate_classification, load_text_classification
from distillation.errors import InputError
from distillation.losses import cross_entropy_sum
from distillation.objectives.base import Objective


class SequenceClassification(Objective):
    name = "sequence_classification"
    task_loss_name = "task"
    auto_model_class = AutoModelForSequenceClassification
    deterministic_inputs = True

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        # Named labels of a fine-tuned teacher fix the id of each string label in the data.
        self.label2id = _named_labels(cfg.teacher_name) if cfg.teacher_name else None

    def load_dataset(self, path, flag):
        ds = load_text_classification(
            path, flag, self.tokenizer, self.cfg.text_column, self.cfg.label_column,
            self.cfg.max_seq_length, self.cfg.text_pair_column, self.label2id,
        )
        if ds.label2id is not None:
            self.label2id = ds.label2id  # the eval set must use the training set's mapping
        return ds

    def collate(self, examples):
        return collate_classification(examples, self.tokenizer.pad_token_id or 0)

    def student_config_overrides(self, train_dataset):
        n = train_dataset.num_labels
        if self.cfg.teacher_name:
            n = max(n, AutoConfig.from_pretrained(self.cfg.teacher_name).num_labels)
        overrides = {"num_labels": n}
        if self.label2id:
            overrides["label2id"] = dict(self.label2id)
            overrides["id2label"] = {i: name for name, i in self.label2id.items()}
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
                f"--data_file: label {train_dataset.num_labels - 1} is outside the model's "
                f"num_labels={n_student} (--label_column '{self.cfg.label_column}')"
            )

    def counts(self, batch):
        n = batch["labels"].new_tensor(batch["labels"].shape[0])
        return {"task": n, "rows": n, "tokens": batch["attention_mask"].sum()}

    def task_loss(self, student_logits, batch):
        return cross_entropy_sum(student_logits, batch["labels"])

    def distill_rows(self, student_logits, teacher_logits, batch):
        return student_logits, teacher_logits  # [B, num_labels]: one row per example

    def eval_batch(self, student_logits, teacher_logits, batch):
        stats = {"pred": student_logits.argmax(-1).cpu(), "label": batch["labels"].cpu()}
        if teacher_logits is not None:
            stats["teacher_pred"] = teacher_logits.argmax(-1).cpu()
        return stats

    def eval_metrics(self, stats: Dict[str, torch.Tensor]) -> Dict[str, float]:
        label = stats["label"]
        metrics = {"accuracy": _accuracy(stats["pred"], label), "macro_f1": macro_f1(stats["pred"], label)}
        if "teacher_pred" in stats:
            metrics["teacher_accuracy"] = _accuracy(stats["teacher_pred"], label)
            metrics["teacher_macro_f1"] = macro_f1(stats["teacher_pred"], label)
            metrics["teacher_agreement"] = _accuracy(stats["pred"], stats["teacher_pred"])
        return metrics


def _accuracy(pred: torch.Tensor, label: torch.Tensor) -> float:
    return (pred == label).float().mean().item()


def macro_f1(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for c in torch.unique(torch.cat([pred, label])):
        tp = ((pred == c) & (label == c)).sum().item()
        fp = ((pred == c) & (label != c)).sum().item()
        fn = ((pred != c) & (label == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def _named_labels(model_name: str) -> Optional[Dict[str, int]]:
    """The teacher's label2id when its labels have real names (not LABEL_0, LABEL_1...)."""
    config = AutoConfig.from_pretrained(model_name)
    id2label = {int(i): name for i, name in (config.id2label or {}).items()}
    if all(name == f"LABEL_{i}" for i, name in id2label.items()):
        return None
    return {name: i for i, name in id2label.items()}
