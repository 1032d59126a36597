"""Causal language modelling: DistilGPT2's objective, and instruction distillation.

Position t predicts token t+1. Both the hard-label loss and the KL run over the positions
whose next token is a target: every real token of binarized or raw text, only the response of
instruction data (prompt tokens are context). Data: a binarized dataset (scripts/
binarized_data.py), a `.txt` file (cut into --max_seq_length blocks) or instruction records
(JSON/JSONL/CSV/TSV with instruction / input / output, see data/lm_text.py).
"""

import itertools
import math

import torch
from transformers import AutoModelForCausalLM

from distillation.data.lm_seqs_dataset import collate_lm, is_binarized_path, load_lm_sequences
from distillation.data.lm_text import load_instructions, load_text_blocks
from distillation.losses import cross_entropy_sum
from distillation.objectives.base import Objective
from distillation.objectives.lm import IGNORE, eval_token_stats, flat_positions, gather_rows, token_metrics


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Align targets with the positions that predict them.

    Args:
        labels: [B, S] token ids, -100 where nothing is to be predicted (padding, prompt).
    Returns:
        [B, S]: out[:, t] = labels[:, t + 1] (the token position t must predict); the last
        position predicts nothing (-100).
    """
    out = torch.full_like(labels, IGNORE)
    out[:, :-1] = labels[:, 1:]
    return out


class CausalLM(Objective):
    name = "clm"
    task_loss_name = "clm"
    auto_model_class = AutoModelForCausalLM
    deterministic_inputs = False
    metrics = {"loss": "min", "perplexity": "min", "bits_per_byte": "min", "accuracy": "max", "exact_match": "max"}
    pipeline_task = "text-generation"
    cache_refusal = (
        "clm distils a vocabulary-sized distribution at every token: the teacher's logits of one example "
        "(tokens x vocab floats) are too large to cache"
    )

    def __init__(self, cfg, tokenizer, teacher_config=None):
        super().__init__(cfg, tokenizer, teacher_config)
        self.columns = len(tokenizer)

    def load_dataset(self, path, flag):
        max_len = self.cfg.max_seq_length
        if is_binarized_path(path) or path.endswith(".txt"):
            self.no_routes(path, flag)
            load = load_lm_sequences if is_binarized_path(path) else load_text_blocks
            return load(path, flag, self.tokenizer, max_len)
        return load_instructions(path, flag, self.tokenizer, max_len, self.cfg.prompt_template, self.route_column)

    def collate(self, examples):
        return collate_lm(examples, self.tokenizer.pad_token_id, with_labels=True)

    def token_rows(self, batch):
        """([N] flat positions that predict a target, [N] those targets)."""
        shifted = shift_labels(batch["labels"])
        positions = flat_positions(shifted != IGNORE)
        return positions, shifted.reshape(-1)[positions]

    def teacher_target_rows(self, batch) -> int:
        """The rows a cache holds for this batch (--teacher_logits): one per target."""
        return len(self.token_rows(batch)[0])

    def counts(self, batch):
        predicted = (batch["labels"][:, 1:] != IGNORE).sum()
        return {"task": predicted, "rows": predicted, "tokens": batch["attention_mask"].sum()}

    def task_loss(self, student_logits, batch):
        positions, targets = self.token_rows(batch)
        return cross_entropy_sum(gather_rows(student_logits, positions, self.columns), targets)

    def distill_rows(self, student_logits, teacher_logits, batch):
        positions, _ = self.token_rows(batch)
        return gather_rows(student_logits, positions, self.columns), gather_rows(teacher_logits, positions, self.columns)

    def eval_batch(self, student_logits, teacher_logits, batch):
        """Loss and perplexity over every target; accuracy over the targets that are not special
        tokens (EOS, padding, unknown: in a run whose data the tokenizer barely knew, 80% <unk> and
        11% EOS targets made every model score ~0.9); exact match over instruction responses."""
        positions, targets = self.token_rows(batch)
        special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), device=targets.device)
        rows = positions // batch["input_ids"].shape[1]
        responses = batch["prompt_len"][rows] > 0  # instruction data: score whole responses too
        stats = eval_token_stats(student_logits, teacher_logits, positions, targets, ~torch.isin(targets, special), self.columns,
                                 rows if bool(responses.any()) else None, batch["input_ids"].shape[0])
        stats["bytes"] = torch.tensor([float(self.text_bytes(batch, targets, rows))])
        return stats

    def text_bytes(self, batch, targets, rows) -> int:
        """UTF-8 bytes of the text the targets spell, sequence by sequence (special tokens spell
        none); `rows` [N] the sequence of each target, in order (flat positions are)."""
        sequences = itertools.groupby(zip(rows.tolist(), targets.tolist()), key=lambda pair: pair[0])
        return sum(len(self.tokenizer.decode([t for _, t in pairs], skip_special_tokens=True).encode("utf-8")) for _, pairs in sequences)

    def eval_metrics(self, stats):
        """token_metrics, and bits per byte: the NLL of every target in bits over the UTF-8 bytes of
        the text they spell, the one measure that compares models of different tokenizers."""
        metrics = token_metrics(stats, "accuracy")
        for prefix in ("", "teacher_"):
            # a teacher with another tokenizer scores its own tokens: the bytes they spell
            n_bytes = stats[f"{prefix}bytes" if f"{prefix}bytes" in stats else "bytes"].sum().item() if "bytes" in stats else 0
            if f"{prefix}nll" in stats and n_bytes:
                metrics[f"{prefix}bits_per_byte"] = stats[f"{prefix}nll"].sum().item() / math.log(2) / n_bytes
        return metrics
