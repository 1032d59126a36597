"""The speed levers change speed only: cached teacher logits give the losses of recomputing
the teacher, and bf16 autocast trains on CPU."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import make_examples, read_metrics, train_args, write_jsonl
from distillation.config import DistillConfig
from distillation.pipeline import run


def _run(assets, dump, *extra):
    return run(DistillConfig.from_cli(train_args(assets, dump, "--log_interval", "1", *extra)))


def test_cached_teacher_logits_give_the_losses_of_recomputing(assets, tmp_path):
    # Without length grouping batches are reshuffled per epoch, so epoch 2 reads cached rows
    # in a different batch composition than the one that filled the cache.
    common = ("--n_epoch", "2", "--no-group_by_size", "--alpha_ce", "0.5", "--alpha_task", "0.5")
    _run(assets, tmp_path / "fresh", *common)
    _run(assets, tmp_path / "cached", *common, "--cache_teacher_logits")
    fresh = [r for r in read_metrics(tmp_path / "fresh") if "loss" in r]
    cached = [r for r in read_metrics(tmp_path / "cached") if "loss" in r]
    assert len(fresh) == len(cached) == 2 * 96 // 16  # one line per step
    assert max(r["epoch"] for r in cached) == 2
    for a, b in zip(fresh, cached):
        for key in ("loss", "loss_ce", "loss_task"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)


def test_bf16_trains_on_cpu(assets, tmp_path):
    """16 examples learnt by heart in 20 steps: bf16 autocast falls as fp32 does, keeps fp32
    master weights, and changes them."""
    train = write_jsonl(str(tmp_path / "small.jsonl"), make_examples(16, seed=3))
    losses = {}
    for precision in ("fp32", "bf16"):
        run(DistillConfig.from_cli([
            "--student_name", assets["student"], "--data_file", train, "--dump_path", str(tmp_path / precision),
            "--batch_size", "16", "--max_steps", "20", "--learning_rate", "1e-2", "--warmup_prop", "0",
            "--alpha_ce", "0", "--alpha_task", "1", "--log_interval", "1", "--precision", precision,
        ]))
        losses[precision] = [r["loss"] for r in read_metrics(tmp_path / precision) if "loss" in r]
    bf16 = losses["bf16"]
    assert len(bf16) == 20 and all(math.isfinite(x) for x in bf16)
    assert bf16[-1] < 0.2 * bf16[0]
    assert bf16[-1] == pytest.approx(losses["fp32"][-1], abs=0.02)
    assert bf16 != losses["fp32"]  # autocast really ran in bf16
    before = AutoModelForSequenceClassification.from_pretrained(assets["student"]).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bf16" / "final").state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
