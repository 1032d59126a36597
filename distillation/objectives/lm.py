"""What the mlm and clm objectives share: row gathering and the per-token statistics behind
masked accuracy and perplexity.

Language-model logits are [B, S, V] with V in the tens of thousands, so rows are always
gathered by flat index from the [B*S, V] view: never through a (B, S, V) boolean mask, which
would copy the whole logits tensor.
"""

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F


IGNORE = -100


def flat_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool -> [N] int64 indices into the flattened B*S positions where mask is set."""
    return mask.reshape(-1).nonzero().squeeze(1)


def gather_rows(logits: torch.Tensor, positions: torch.Tensor, columns: Optional[int] = None) -> torch.Tensor:
    """[B, S, V] logits, [N] flat positions -> [N, V] rows (a copy of the N rows only), or their
    first `columns` columns [N, columns] (the tokenizer's tokens: rows of a padded vocabulary
    past them carry no meaning, and teacher and student may pad to different sizes)."""
    rows = logits.reshape(-1, logits.shape[-1]).index_select(0, positions)
    return rows if columns is None else rows[:, :columns]


class HeadRows:
    """A model's final hidden states [B, S, H] and its LM head, standing for its [B, S, V] logits
    in evaluation (--loss_chunk_rows): `chunks` applies the head to `rows` positions at a time,
    so the whole batch's logits never exist at once."""

    def __init__(self, hidden: torch.Tensor, head, rows: int):
        self.hidden, self.head, self.rows = hidden, head, rows

    def chunks(self, positions: torch.Tensor, columns: Optional[int]):
        """Yields (slice of `positions`, [n, columns] logits of those positions)."""
        for start in range(0, len(positions), self.rows):
            part = slice(start, start + self.rows)
            logits = self.head(gather_rows(self.hidden, positions[part]))  # [n, V]
            yield part, logits if columns is None else logits[:, :columns]


def _scores(logits, positions, targets, columns):
    """(summed NLL, [N] bool hit) of `logits` (a [B, S, V] tensor or HeadRows) at `positions`."""
    if isinstance(logits, HeadRows):
        parts = [(F.cross_entropy(rows.float(), targets[part], reduction="sum"), rows.argmax(-1) == targets[part])
                 for part, rows in logits.chunks(positions, columns)]
        return sum(nll for nll, _ in parts), torch.cat([hit for _, hit in parts])
    rows = gather_rows(logits, positions, columns)
    return F.cross_entropy(rows.float(), targets, reduction="sum"), rows.argmax(-1) == targets


def token_stats(logits, positions: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor, columns: Optional[int],
                rows: Optional[torch.Tensor], n_rows: int, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Statistics of the N predicted tokens of one batch, as CPU tensors.

    Args:
        logits: [B, S, V] (or HeadRows standing for them); None: no statistics, e.g. no teacher.
        positions: [N] flat positions of the predicted tokens; columns: the logits scored.
        targets: [N] the ids they should predict.
        scored: [N] bool, the targets accuracy counts: not the special tokens (EOS, padding,
            unknown) that every model predicts alike and that would swamp the accuracy.
        rows: [N] the sequence of each target, or None; n_rows: B. With rows, whole-sequence
            exact match: every target of the sequence (EOS included) predicted.
    Returns:
        {nll, count: 1-element sums over all N; correct, scored: over the scored targets;
        exact: [B] 1/0 per sequence with targets (only with rows)}, each key prefixed.
    """
    if logits is None:
        return {}
    nll, hit = _scores(logits, positions, targets, columns)
    stats = {"nll": nll.reshape(1), "count": torch.tensor([float(targets.numel())]),
             "correct": (hit & scored).sum().reshape(1).float(), "scored": scored.sum().reshape(1).float()}
    if rows is not None:
        misses = torch.zeros(n_rows, device=targets.device).index_add_(0, rows, (~hit).float())
        has = torch.zeros(n_rows, device=targets.device).index_add_(0, rows, torch.ones_like(rows, dtype=torch.float))
        stats["exact"] = (misses == 0).float()[has > 0]
    return {prefix + k: v.cpu() for k, v in stats.items()}


def eval_token_stats(student_logits, teacher_logits, positions, targets, scored, columns, rows=None, n_rows=0) -> Dict[str, torch.Tensor]:
    """token_stats of the student (and of the teacher, prefixed `teacher_`) at `positions`, over
    their first `columns` logits."""
    stats = token_stats(student_logits, positions, targets, scored, columns, rows, n_rows)
    stats.update(token_stats(teacher_logits, positions, targets, scored, columns, rows, n_rows, "teacher_"))
    return stats


def token_metrics(stats: Dict[str, torch.Tensor], accuracy_name: str) -> Dict[str, float]:
    """loss (mean NLL over every target), perplexity, accuracy (over the scored targets) and,
    with sequences, exact_match: for the student and (when present) the teacher."""
    metrics = {}
    for prefix in ("", "teacher_"):
        if f"{prefix}count" not in stats:
            continue
        loss = stats[f"{prefix}nll"].sum().item() / max(stats[f"{prefix}count"].sum().item(), 1.0)
        metrics[f"{prefix}loss"] = loss
        metrics[f"{prefix}perplexity"] = math.exp(min(loss, 700.0))  # exp overflows past ~709
        metrics[f"{prefix}{accuracy_name}"] = stats[f"{prefix}correct"].sum().item() / max(stats[f"{prefix}scored"].sum().item(), 1.0)
        if f"{prefix}exact" in stats and len(stats[f"{prefix}exact"]):
            metrics[f"{prefix}exact_match"] = stats[f"{prefix}exact"].mean().item()
    return metrics
