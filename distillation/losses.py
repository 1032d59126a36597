"""Pure loss functions. Each returns a *sum* over rows/positions, never a mean.

The Distiller divides every sum by the global count of rows (or tokens) of the whole
optimizer step, so one step's loss equals the loss of the concatenated batch whatever the
gradient accumulation and world size (DESIGN §4). All math runs in fp32 under any autocast.

Logits of -inf (a column the model masks: padded vocabulary rows, banned tokens) have
probability 0. The divergences take 0·log 0 = 0, so a column both models mask adds nothing
and forward KL stays finite where only the teacher masks one. Where the true value is
infinite (reverse KL onto a column the teacher masks while the student gives it mass), the
masked probability is taken as float32's smallest normal number (log = -87.3): the term is
p_s·(log p_s + 87.3), finite, and its gradient pushes the student's mass off that column.
"""

import math

import torch
import torch.nn.functional as F

# log of float32's smallest normal number: what a probability of exactly 0 counts as in a log.
LOG_ZERO = math.log(torch.finfo(torch.float32).tiny)


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in fp32, with masked (-inf) columns at LOG_ZERO: finite, so that no
    0·(-inf) or (-inf) - (-inf) makes a NaN in the loss or its gradient."""
    return finite_log_probs(F.log_softmax(logits.float() / temperature, dim=-1))


def finite_log_probs(log_p: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with -inf (probability 0) replaced by LOG_ZERO; NaN stays NaN."""
    return torch.where(log_p == float("-inf"), LOG_ZERO, log_p)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[N]: KL(p || q) of each row, from finite log-probabilities (a column at LOG_ZERO on both
    sides adds exactly 0; at LOG_ZERO in p alone, e^-87.3·(...) ~ 1e-36)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)


def _mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w·p + (1-w)·q), computed in log space."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def _sum_rows(per_row: torch.Tensor, mask) -> torch.Tensor:
    return (per_row if mask is None else torch.where(mask.bool(), per_row, 0.0)).sum()


def forward_kl(student_logits, teacher_logits, temperature: float, beta=None, mask=None) -> torch.Tensor:
    """Sum over rows of KL(p_t || p_s) * T², with p = softmax(logits / T): the reference's loss
    (mass-covering: the student is pushed to put mass wherever the teacher does).

    Args:
        student_logits: [N, V] rows to distil (any float dtype; fp32 inside).
        teacher_logits: [N, V] the teacher's logits for the same rows.
        temperature: T > 0. beta: unused (every divergence takes it).
        mask: optional [N] bool; rows where it is False add 0.
    Returns:
        scalar fp32 tensor; divide by the global row count for the reference's batchmean.
    """
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    return _sum_rows(_kl_rows(t, s), mask) * temperature**2


def reverse_kl(student_logits, teacher_logits, temperature: float, beta=None, mask=None) -> torch.Tensor:
    """Sum over rows of KL(p_s || p_t) * T² (mode-seeking: the student may drop teacher modes it
    cannot fit). Shapes as `forward_kl`."""
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    return _sum_rows(_kl_rows(s, t), mask) * temperature**2


def jsd(student_logits, teacher_logits, temperature: float, beta: float = 0.5, mask=None) -> torch.Tensor:
    """Sum over rows of the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024,
    TRL's `generalized_jsd_loss`) * T²: with m = β·p_t + (1-β)·p_s,

        JSD_β = β·KL(p_t || m) + (1-β)·KL(p_s || m).

    β = 0.5 is the symmetric JSD. JSD_β / β tends to forward KL as β -> 0 and JSD_β / (1-β) to
    reverse KL as β -> 1 (JSD_β itself tends to 0 there); as in TRL, β = 0 and β = 1 exactly
    give forward and reverse KL. Shapes as `forward_kl`."""
    if beta <= 0:
        return forward_kl(student_logits, teacher_logits, temperature, mask=mask)
    if beta >= 1:
        return reverse_kl(student_logits, teacher_logits, temperature, mask=mask)
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    m = _mixture(t, s, beta)
    return _sum_rows(beta * _kl_rows(t, m) + (1 - beta) * _kl_rows(s, m), mask) * temperature**2


def skew_kl(student_logits, teacher_logits, temperature: float, beta: float = 0.1, mask=None) -> torch.Tensor:
    """Sum over rows of the skew KL of DistiLLM (Ko et al. 2024) * T²: KL(p_t || β·p_t + (1-β)·p_s).

    β = 0 is forward KL; a small skew (default 0.1) bounds the loss and its gradient where the
    student gives a teacher token almost no mass. Needs β < 1 (β = 1 is identically 0). Shapes as
    `forward_kl`."""
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    mixed = s if beta <= 0 else _mixture(t, s, beta)
    return _sum_rows(_kl_rows(t, mixed), mask) * temperature**2


def tvd(student_logits, teacher_logits, temperature: float, beta=None, mask=None) -> torch.Tensor:
    """Sum over rows of the total variation distance ½·Σ|p_t - p_s| * T² (bounded in [0, T²]
    per row; DistillKit's TVD). Shapes as `forward_kl`."""
    s, t = _log_probs(student_logits, temperature).exp(), _log_probs(teacher_logits, temperature).exp()
    return _sum_rows(0.5 * (t - s).abs().sum(dim=-1), mask) * temperature**2


def topk_buckets(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """The student's distribution over a cached top-k support plus the rest of the vocabulary.

    Args:
        student_logits: [N, V]; ids: [N, K] the teacher's top-k token ids of each row.
    Returns:
        [N, K + 1] fp32 log-probabilities: log p_s of each id at T, then log(1 - their sum).
    """
    logp = _log_probs(student_logits, temperature).gather(-1, ids)
    return torch.cat([logp, log_rest(logp).unsqueeze(-1)], dim=-1)


def tempered_as_buckets(buckets: torch.Tensor, temperature: float) -> torch.Tensor:
    """k + 1 bucket log-probabilities at T = 1 -> the same at T, each bucket tempered as one token.

    Args:
        buckets: [N, K + 1] log-probabilities at T = 1 (the top k, then the rest).
    Returns:
        [N, K + 1] log(softmax(buckets / T)): exact at T = 1. At T > 1 "the rest" gets less mass
        than the tempered whole vocabulary would give it, so a loss must temper both sides so.
    """
    scaled = buckets / temperature
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


def log_rest(logp: torch.Tensor) -> torch.Tensor:
    """[N, K] log-probabilities of K distinct classes -> [N] log of the mass outside them,
    log(1 - Σ p), floored at 1e-30 (the K may hold all of it)."""
    return torch.log(torch.clamp(-torch.expm1(torch.logsumexp(logp, dim=-1)), min=1e-30))


def sampled_kl(student_logits: torch.Tensor, ids: torch.Tensor, head_logp: torch.Tensor, entropy: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """Sum over rows of an unbiased estimate of KL(p_t || p_s) * T² from an exact head and draws
    from the teacher's tail (random-sampling KD):
    Σ_head p_t·(-log p_s) + (1 - Σ_head p_t)·mean_draws(-log p_s) - H(p_t). H(p_t) does not
    depend on the student, so the gradient is unbiased for the forward-KL gradient too.

    Args:
        student_logits: [N, V]; ids: [N, H + K] the teacher's H most likely ids, then K draws from
        the rest of p_t at T (repeats allowed; K ≥ 1); head_logp: [N, H] the teacher's
        log-probabilities of the head at T (H may be 0); entropy: [N] the teacher's entropy at T.
    Returns:
        scalar fp32 tensor; divide by the global row count.
    """
    logp = _log_probs(student_logits, temperature).gather(-1, ids)
    head = head_logp.shape[-1]
    p_head = head_logp.float().exp()
    tail_mass = (1 - p_head.sum(dim=-1)).clamp(min=0)
    cross_entropy = -(p_head * logp[:, :head]).sum(dim=-1) - tail_mass * logp[:, head:].mean(dim=-1)
    return (cross_entropy - entropy.float()).sum() * temperature**2


def projected_log_probs(teacher_logits: torch.Tensor, first: torch.Tensor, columns: int, temperature: float) -> torch.Tensor:
    """A teacher's distribution over a student's vocabulary: each teacher token's probability
    given to the student token that stands for it (data/alignment.first_tokens), renormalised
    over the teacher tokens that have one.

    Args:
        teacher_logits: [N, V_t]; first: [V_t] a student id per teacher token, -1 for none;
        columns: the student's V_s.
    Returns:
        [N, V_s] fp32 log-probabilities at T (LOG_ZERO where no teacher token stands).
    """
    p = _log_probs(teacher_logits, temperature).exp()
    kept = first >= 0
    q = p.new_zeros((p.shape[0], columns)).index_add_(1, first[kept], p[:, kept])
    return finite_log_probs(torch.log(q / q.sum(-1, keepdim=True).clamp(min=1e-30)))


def uld(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows of the Universal Logit Distillation loss (Boizard et al. 2024) * T²: the
    Wasserstein-1 distance between the two distributions with their tokens ranked by probability,
    Σ_k |p_s^(k) - p_t^(k)| (the k-th largest probability of each; the smaller vocabulary padded
    with zeros). It needs no mapping between the vocabularies, and sees only their shapes.

    Args:
        student_logits: [N, V_s]; teacher_logits: [N, V_t] (any sizes).
    Returns:
        scalar fp32 tensor; divide by the global row count.
    """
    # Past the smaller vocabulary's size K the larger one's ranks pair with zeros: only its K
    # largest are needed one by one (topk, ~6x faster than sorting 49k columns), then its rest's mass.
    k = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s = _log_probs(student_logits, temperature).exp().topk(k, dim=-1).values
    t = _log_probs(teacher_logits, temperature).exp().topk(k, dim=-1).values
    rest = (1 - s.sum(-1)).clamp(min=0) + (1 - t.sum(-1)).clamp(min=0)
    return ((s - t).abs().sum(-1) + rest).sum() * temperature**2


def shared_topk_buckets(student_logits: torch.Tensor, mapped: torch.Tensor, values: torch.Tensor, tail: torch.Tensor,
                        temperature: float):
    """A teacher's cached top-k (on its own tokens) and a student of another tokenizer, as buckets
    both can fill: each top-k token the student's vocabulary also holds, then the rest.

    Args:
        student_logits: [N, V_s]; mapped: [N, K] the student's id of each of the teacher's top-k
        tokens, -1 where no student token spells it; values: [N, K] the teacher's log-probabilities
        of its top k at T; tail: [N] the log of its mass outside them.
    Returns:
        (student [N, K + 1], teacher [N, K + 1]) fp32 log-probabilities at T: the shared tokens'
        own buckets (LOG_ZERO on both sides where a top-k token is the teacher's only), then the
        rest: for the teacher its tail and its top-k tokens the student lacks, for the student
        everything but the shared ones.
    """
    shared = mapped >= 0
    student = torch.where(shared, _log_probs(student_logits, temperature).gather(-1, mapped.clamp(min=0)), LOG_ZERO)
    teacher = torch.where(shared, values.float(), LOG_ZERO)
    teacher_rest = torch.logsumexp(torch.cat([tail.float().unsqueeze(-1), torch.where(shared, float("-inf"), values.float())], -1), -1)
    return (torch.cat([student, log_rest(student).unsqueeze(-1)], dim=-1),
            torch.cat([teacher, finite_log_probs(teacher_rest).unsqueeze(-1)], dim=-1))


def topk_uld(student_logits: torch.Tensor, values: torch.Tensor, tail: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows of ULD (see `uld`) against a teacher known by its top k and their rest:
    Σ_{k ≤ K} |p_s^(k) - p_t^(k)| + |rest_s - rest_t| * T², the first K ranks exact and the rest
    compared as one mass (a lower bound of the ranks past K, whose spread the cache does not keep).

    Args:
        student_logits: [N, V_s]; values: [N, K] the teacher's top-k log-probabilities at T; tail: [N].
    Returns:
        scalar fp32 tensor; divide by the global row count.
    """
    top = _log_probs(student_logits, temperature).exp().topk(values.shape[-1], dim=-1).values
    teacher = values.float().exp().sort(dim=-1, descending=True).values
    rest = (1 - top.sum(-1)).clamp(min=0) - tail.float().exp()
    return ((top - teacher).abs().sum(-1) + rest.abs()).sum() * temperature**2


# --divergence NAME -> (function, the default --divergence_beta or None where β has no role).
DIVERGENCES = {
    "forward_kl": (forward_kl, None),
    "reverse_kl": (reverse_kl, None),
    "jsd": (jsd, 0.5),
    "skew_kl": (skew_kl, 0.1),
    "tvd": (tvd, None),
}


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
