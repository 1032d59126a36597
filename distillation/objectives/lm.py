"""What the mlm and clm objectives share: the sequence-length limit, row gathering, and the
per-token statistics behind masked accuracy and perplexity.

Language-model logits are [B, S, V] with V in the tens of thousands, so rows are always
gathered by flat index from the [B*S, V] view: never through a (B, S, V) boolean mask, which
would copy the whole logits tensor.
"""

import json
import math
import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from distillation.models import load_config

IGNORE = -100


def max_positions(values: dict) -> Optional[int]:
    """A model config's (as a dict) longest input: BERT/Llama's max_position_embeddings,
    GPT-2's n_positions."""
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(values.get(key), int):
            return values[key]
    return None


def sequence_limit(cfg) -> int:
    """--max_seq_length, lowered to what both the teacher and the student accept."""
    limits = [cfg.max_seq_length]
    for flag, name in (("--teacher_name", cfg.teacher_name), ("--student_name", cfg.student_name)):
        if name:
            limits.append(max_positions(load_config(name, flag).to_dict()))
    if cfg.student_config and os.path.isfile(cfg.student_config):
        try:
            with open(cfg.student_config) as f:
                limits.append(max_positions(json.load(f)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # load_student reports the broken file with its own message
    return min(n for n in limits if n)


def flat_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool -> [N] int64 indices into the flattened B*S positions where mask is set."""
    return mask.reshape(-1).nonzero().squeeze(1)


def gather_rows(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, S, V] logits, [N] flat positions -> [N, V] rows (a copy of the N rows only)."""
    return logits.reshape(-1, logits.shape[-1]).index_select(0, positions)


def token_stats(logits: Optional[torch.Tensor], targets: torch.Tensor, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Sums over the N predicted tokens of one batch, as 1-element CPU tensors.

    Args:
        logits: [N, V] gathered rows (None: no statistics, e.g. no teacher).
        targets: [N] the ids they should predict.
    Returns:
        {prefix+"nll": sum of cross-entropy, prefix+"correct": argmax hits, prefix+"count": N}.
    """
    if logits is None:
        return {}
    nll = F.cross_entropy(logits.float(), targets, reduction="sum")
    correct = (logits.argmax(-1) == targets).sum()
    return {
        f"{prefix}nll": nll.reshape(1).cpu(),
        f"{prefix}correct": correct.reshape(1).float().cpu(),
        f"{prefix}count": torch.tensor([float(targets.numel())]),
    }


def eval_token_stats(student_logits, teacher_logits, positions, targets) -> Dict[str, torch.Tensor]:
    """token_stats of the student (and of the teacher, prefixed `teacher_`) at `positions`."""
    stats = token_stats(gather_rows(student_logits, positions), targets)
    if teacher_logits is not None:
        stats.update(token_stats(gather_rows(teacher_logits, positions), targets, "teacher_"))
    return stats


def token_metrics(stats: Dict[str, torch.Tensor], accuracy_name: str) -> Dict[str, float]:
    """loss (mean NLL), perplexity and accuracy, for the student and (when present) the teacher."""
    metrics = {}
    for prefix in ("", "teacher_"):
        if f"{prefix}count" not in stats:
            continue
        count = max(stats[f"{prefix}count"].sum().item(), 1.0)
        loss = stats[f"{prefix}nll"].sum().item() / count
        metrics[f"{prefix}loss"] = loss
        metrics[f"{prefix}perplexity"] = math.exp(min(loss, 700.0))  # exp overflows past ~709
        metrics[f"{prefix}{accuracy_name}"] = stats[f"{prefix}correct"].sum().item() / count
    return metrics
