"""Loss functions against hand-written formulas (loops over rows, no torch.nn.functional)."""

import math

import pytest
import torch

from distillation.losses import (
    DIVERGENCES, cross_entropy_sum, forward_kl, hidden_cosine, hidden_mse, jsd, logits_mse, reverse_kl, skew_kl,
)


def _softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def test_kl_times_t_squared_matches_hand_formula():
    torch.manual_seed(0)
    s, t, T = torch.randn(5, 7), torch.randn(5, 7) * 3, 2.0
    expected = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = _softmax([x / T for x in srow]), _softmax([x / T for x in trow])
        expected += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt)) * T * T
    assert math.isclose(forward_kl(s, t, T).item(), expected, rel_tol=1e-5)
    # divided by the rows it is the reference's batchmean
    ref = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s / T, -1), torch.softmax(t / T, -1)) * T**2
    assert math.isclose(forward_kl(s, t, T).item() / 5, ref.item(), rel_tol=1e-5)


def test_kl_is_fp32_under_bf16_inputs_and_zero_for_equal_logits():
    s = torch.randn(4, 3).bfloat16()
    assert forward_kl(s, s, 1.0).dtype == torch.float32
    assert abs(forward_kl(s, s, 3.0).item()) < 1e-6


def test_logits_mse_is_the_references_alpha_mse_term():
    """The reference: MSELoss(reduction="sum")(s, t) / rows, on the raw logits of the distilled rows."""
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5) * 2
    by_hand = sum((a - b) ** 2 for srow, trow in zip(s.tolist(), t.tolist()) for a, b in zip(srow, trow))
    assert math.isclose(logits_mse(s, t).item(), by_hand, rel_tol=1e-5)
    assert math.isclose(logits_mse(s, t).item() / 6, (torch.nn.MSELoss(reduction="sum")(s, t) / 6).item(), rel_tol=1e-6)


def test_cross_entropy_sum_skips_ignored_rows():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, -100, 1])
    expected = sum(-math.log(_softmax(r)[y]) for r, y in zip(logits.tolist(), labels.tolist()) if y != -100)
    assert math.isclose(cross_entropy_sum(logits, labels).item(), expected, rel_tol=1e-5)


def test_hidden_losses_exclude_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    mse = cos = 0.0
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                a, c = s[b, i].tolist(), t[b, i].tolist()
                mse += sum((x - y) ** 2 for x, y in zip(a, c)) / 4
                dot = sum(x * y for x, y in zip(a, c))
                cos += 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in c)))
    assert math.isclose(hidden_mse(s, t, mask).item(), mse, rel_tol=1e-5)
    assert math.isclose(hidden_cosine(s, t, mask).item(), cos, rel_tol=1e-5)
    # garbage in padded positions changes nothing
    s2 = s.clone()
    s2[0, 2] = 1e6
    assert hidden_mse(s2, t, mask).item() == hidden_mse(s, t, mask).item()


# --- divergences ---------------------------------------------------------------------------------
def _hand_divergence(name, s, t, T, beta):
    """Per-row value * T², from probabilities in float64 (no log-space tricks, no F.kl_div)."""
    ps, pt = torch.softmax(s.double() / T, -1), torch.softmax(t.double() / T, -1)

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    if name == "forward_kl":
        rows = kl(pt, ps)
    elif name == "reverse_kl":
        rows = kl(ps, pt)
    elif name == "jsd":
        m = beta * pt + (1 - beta) * ps
        rows = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    elif name == "skew_kl":
        rows = kl(pt, beta * pt + (1 - beta) * ps)
    else:
        rows = 0.5 * (pt - ps).abs().sum(-1)
    return rows * T * T


CASES = [("forward_kl", None), ("reverse_kl", None), ("tvd", None)] + [
    (name, beta) for name in ("jsd", "skew_kl") for beta in (0.1, 0.5, 0.9)]


@pytest.mark.parametrize("name,beta", CASES)
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_divergence_value_and_gradient_match_hand_formula_with_masked_rows(name, beta, T):
    torch.manual_seed(0)
    s, t = torch.randn(9, 11) * 2, torch.randn(9, 11) * 3
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    s.requires_grad_(True)
    ours = DIVERGENCES[name][0](s, t, T, beta, mask=mask)
    ours.backward()
    s64 = s.detach().double().requires_grad_(True)
    hand = _hand_divergence(name, s64, t.double(), T, beta)[mask].sum()
    hand.backward()
    assert ours.dtype == torch.float32
    assert math.isclose(ours.item(), hand.item(), rel_tol=1e-5, abs_tol=1e-6)
    assert torch.allclose(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)
    assert torch.all(s.grad[~mask] == 0)  # masked rows give no gradient
    assert abs(DIVERGENCES[name][0](t, t, T, beta).item()) < 1e-5  # zero at equal distributions


def test_jsd_and_skew_kl_reduce_to_forward_and_reverse_kl_at_their_limits():
    torch.manual_seed(1)
    s, t = torch.randn(6, 8), torch.randn(6, 8) * 2
    fwd, rev = forward_kl(s, t, 2.0).item(), reverse_kl(s, t, 2.0).item()
    # GKD's JSD_β: → 0 at both ends, but JSD_β/β → forward KL and JSD_β/(1-β) → reverse KL.
    eps = 1e-4
    assert math.isclose(jsd(s, t, 2.0, eps).item() / eps, fwd, rel_tol=2e-3)
    assert math.isclose(jsd(s, t, 2.0, 1 - eps).item() / eps, rev, rel_tol=2e-3)
    assert jsd(s, t, 2.0, 0.0).item() == fwd and jsd(s, t, 2.0, 1.0).item() == rev  # TRL's convention at β = 0, 1
    assert math.isclose(skew_kl(s, t, 2.0, 0.0).item(), fwd, rel_tol=1e-6)
    assert math.isclose(skew_kl(s, t, 2.0, eps).item(), fwd, rel_tol=2e-3)
    assert jsd(s, t, 2.0, 0.5).item() <= math.log(2) * 4 * len(s)  # the symmetric JSD is at most ln 2 a row (T² = 4)


# --- masked (-inf) logits ------------------------------------------------------------------------
@pytest.mark.parametrize("name,beta", CASES)
def test_columns_both_models_mask_add_nothing_to_any_divergence_or_its_gradient(name, beta):
    """-inf in the same columns of both: the value and the gradient are those of the rows without
    those columns (0·log 0 = 0), not NaN."""
    torch.manual_seed(2)
    s, t = torch.randn(5, 9) * 2, torch.randn(5, 9) * 3
    masked = torch.tensor([1, 4, 8])
    kept = torch.tensor([i for i in range(9) if i not in masked.tolist()])
    s_inf, t_inf = s.clone(), t.clone()
    s_inf[:, masked], t_inf[:, masked] = float("-inf"), float("-inf")
    s_inf.requires_grad_(True)
    s_kept = s[:, kept].clone().requires_grad_(True)
    fn = DIVERGENCES[name][0]
    with_inf, without = fn(s_inf, t_inf, 2.0, beta), fn(s_kept, t[:, kept], 2.0, beta)
    with_inf.backward()
    without.backward()
    assert torch.isfinite(with_inf) and math.isclose(with_inf.item(), without.item(), rel_tol=1e-5, abs_tol=1e-6)
    assert torch.all(torch.isfinite(s_inf.grad)) and torch.all(s_inf.grad[:, masked] == 0)
    assert torch.allclose(s_inf.grad[:, kept], s_kept.grad, rtol=1e-5, atol=1e-7)


def test_forward_kl_is_finite_where_only_the_teacher_masks_and_reverse_kl_floors_log_zero():
    """Only the teacher masks column 2: forward KL takes p_t = 0 there (0·log 0 = 0): the value of
    the hand formula over the other columns with the student's full distribution. Reverse KL onto
    that column is truly infinite; it is p_s·(log p_s - LOG_ZERO): finite, pushing the mass off."""
    from distillation.losses import LOG_ZERO

    torch.manual_seed(3)
    s, t = torch.randn(4, 6), torch.randn(4, 6) * 2
    t[:, 2] = float("-inf")
    s.requires_grad_(True)
    fwd = forward_kl(s, t, 1.0)
    fwd.backward()
    ps, pt = torch.softmax(s.detach().double(), -1), torch.softmax(t.double(), -1)
    keep = [0, 1, 3, 4, 5]
    by_hand = (pt[:, keep] * (pt[:, keep].log() - ps[:, keep].log())).sum()
    assert torch.isfinite(fwd) and math.isclose(fwd.item(), by_hand.item(), rel_tol=1e-5)
    assert torch.all(torch.isfinite(s.grad)) and torch.all(s.grad[:, 2] > 0)  # the student's mass there is pushed off
    rev = reverse_kl(s, t, 1.0)
    floor = (ps[:, keep] * (ps[:, keep].log() - pt[:, keep].log())).sum() + (ps[:, 2] * (ps[:, 2].log() - LOG_ZERO)).sum()
    assert torch.isfinite(rev) and math.isclose(rev.item(), floor.item(), rel_tol=1e-5)
    assert LOG_ZERO == pytest.approx(-87.34, abs=0.01)
