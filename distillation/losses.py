"""Pure loss functions. Each returns a *sum* over rows/positions, never a mean.

The Distiller divides every sum by the global count of rows (or tokens) of the whole
optimizer step, so one step's loss equals the loss of the concatenated batch whatever the
gradient accumulation and world size (DESIGN §4). All math runs in fp32 under any autocast.
"""

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows of KL(softmax(t/T) || softmax(s/T)) * T².

    Args:
        student_logits: [N, C] rows to distil (any float dtype; upcast to fp32).
        teacher_logits: [N, C] the teacher's logits for the same rows.
        temperature: T > 0.
    Returns:
        scalar fp32 tensor; divide by the global row count for the batchmean of the reference.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="sum", log_target=True) * temperature**2


def logits_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the squared error of the raw logits, summed over classes: the reference's
    `--alpha_mse` term (MSELoss(reduction="sum") over the distilled rows, before its / rows).

    Args:
        student_logits: [N, C]; teacher_logits: [N, C] (no temperature).
    Returns:
        scalar fp32 tensor; divide by the global row count.
    """
    return (student_logits.float() - teacher_logits.float()).pow(2).sum()


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Sum of hard-label cross-entropy.

    Args:
        logits: [N, C]; labels: [N] class ids, `ignore_index` rows skipped.
    Returns:
        scalar fp32 tensor; divide by the global count of labelled rows.
    """
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over unmasked positions of the per-position mean squared error.

    Args:
        student_hidden: [B, S, H] (already projected to the teacher's width).
        teacher_hidden: [B, S, H].
        mask: [B, S] bool/int, 1 where a position counts (padding excluded).
    Returns:
        scalar fp32 tensor; divide by the global count of unmasked positions.
    """
    keep = mask.bool()
    diff = student_hidden.float()[keep] - teacher_hidden.float()[keep]  # [P, H]
    return diff.pow(2).mean(dim=-1).sum()


def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over unmasked positions of 1 - cos(student, teacher): the reference's
    CosineEmbeddingLoss with target 1, before its mean.

    Args:
        student_hidden: [B, S, H]; teacher_hidden: [B, S, H]; mask: [B, S].
    Returns:
        scalar fp32 tensor; divide by the global count of unmasked positions.
    """
    keep = mask.bool()
    cos = F.cosine_similarity(student_hidden.float()[keep], teacher_hidden.float()[keep], dim=-1)
    return (1.0 - cos).sum()
