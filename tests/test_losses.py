"""Loss functions against hand-written formulas (loops over rows, no torch.nn.functional)."""

import math

import torch

from distillation.losses import cross_entropy_sum, hidden_cosine, hidden_mse, logits_mse, soft_target_kl


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
    assert math.isclose(soft_target_kl(s, t, T).item(), expected, rel_tol=1e-5)
    # divided by the rows it is the reference's batchmean
    ref = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s / T, -1), torch.softmax(t / T, -1)) * T**2
    assert math.isclose(soft_target_kl(s, t, T).item() / 5, ref.item(), rel_tol=1e-5)


def test_kl_is_fp32_under_bf16_inputs_and_zero_for_equal_logits():
    s = torch.randn(4, 3).bfloat16()
    assert soft_target_kl(s, s, 1.0).dtype == torch.float32
    assert abs(soft_target_kl(s, s, 3.0).item()) < 1e-6


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
