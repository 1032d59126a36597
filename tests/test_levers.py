"""The speed levers change speed only: cached teacher logits are each example's own and give the
losses of recomputing the teacher; bf16 and fp16 (with its GradScaler) train on the CPU;
--compile and --num_workers give the plain run's losses; the --freeze_* flags freeze."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import build_distiller, first_step, make_examples, read_metrics, train_args, write_jsonl
from distillation.cli.options import config_from_cli
from distillation.pipeline import run


def _run(assets, dump, *extra):
    return run(config_from_cli(train_args(assets, dump, "--log_interval", "1", *extra)))


def test_cached_teacher_logits_give_the_losses_of_recomputing(assets, tmp_path):
    # Without length grouping batches are reshuffled per epoch, so epoch 2 reads cached rows
    # in a different batch composition than the one that filled the cache.
    common = ("--n_epoch", "2", "--no-group_by_size", "--alpha_ce", "0.5", "--alpha_task", "0.5")
    _run(assets, tmp_path / "fresh", *common, "--no-cache_teacher_logits")  # the cache is on by default
    _run(assets, tmp_path / "cached", *common, "--cache_teacher_logits")
    fresh = [r for r in read_metrics(tmp_path / "fresh") if "loss" in r]
    cached = [r for r in read_metrics(tmp_path / "cached") if "loss" in r]
    assert len(fresh) == len(cached) == 2 * 96 // 16  # one line per step
    assert max(r["epoch"] for r in cached) == 2
    for a, b in zip(fresh, cached):
        for key in ("loss", "loss_ce", "loss_task"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(assets, tmp_path, precision):
    """16 examples learnt by heart in 20 steps: autocast falls as fp32 does, keeps fp32 master
    weights and changes them; fp16's GradScaler is on and its state is in the checkpoint."""
    train = write_jsonl(str(tmp_path / "small.jsonl"), make_examples(16, seed=3))
    losses = {}
    for name in ("fp32", precision):
        run(config_from_cli([
            "--student_name", assets["student"], "--data_file", train, "--dump_path", str(tmp_path / name),
            "--batch_size", "16", "--max_steps", "20", "--learning_rate", "1e-2", "--warmup_prop", "0",
            "--alpha_task", "1", "--log_interval", "1", "--precision", name,
        ]))
        losses[name] = [r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]
    mixed = losses[precision]
    assert len(mixed) == 20 and all(math.isfinite(x) for x in mixed)
    assert mixed[-1] < 0.2 * mixed[0]
    assert mixed[-1] == pytest.approx(losses["fp32"][-1], abs=0.02)
    assert mixed != losses["fp32"]  # autocast really ran in 16 bits
    before = AutoModelForSequenceClassification.from_pretrained(assets["student"]).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / precision / "final").state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    scaler = torch.load(tmp_path / precision / "checkpoint" / "trainer.pt", weights_only=True)["scaler"]
    assert (scaler.get("scale", 0) > 0) == (precision == "fp16")  # an enabled GradScaler saves its state


def test_cached_teacher_logits_are_each_examples_own(assets, tmp_path):
    """The cache is filled by the shuffled training batches and read back per example: each row
    must be that example's own logits (the test teacher's logits differ from example to example)."""
    distiller, data, _ = build_distiller(assets, tmp_path, batch_size=8, gradient_accumulation_steps=1, cache_teacher_logits=True)
    teacher, collate = distiller.teacher, distiller.objective.collate
    for ids in distiller._batches(epoch=0):
        teacher.outputs(collate([data[i] for i in ids]))
    cached = torch.cat([teacher.outputs(collate([data[i]]))[0] for i in range(len(data))])
    with torch.no_grad():
        own = torch.cat([teacher.model(**{k: v for k, v in collate([data[i]]).items() if k in ("input_ids", "attention_mask",
                                                                                               "token_type_ids")}).logits
                         for i in range(len(data))])
    assert own.std(0).min() > 0.5  # a sensitive teacher: swapped rows could not pass
    assert torch.allclose(cached, own, atol=1e-5)


@pytest.mark.parametrize("lever", [["--compile"], ["--num_workers", "2"], ["--gradient_checkpointing"]],
                         ids=["compile", "num_workers", "gradient_checkpointing"])
def test_speed_levers_give_the_losses_of_the_plain_run(assets, tmp_path, lever):
    common = ("--max_steps", "3", "--batch_size", "8", "--no-group_by_size", "--alpha_ce", "0.5", "--alpha_task", "0.5")
    _run(assets, tmp_path / "plain", *common)
    _run(assets, tmp_path / "lever", *common, *lever)
    plain = [r["loss"] for r in read_metrics(tmp_path / "plain") if "loss" in r]
    lever = [r["loss"] for r in read_metrics(tmp_path / "lever") if "loss" in r]
    assert len(plain) == 3 and lever == pytest.approx(plain, rel=1e-4)


def test_gradient_checkpointing_recomputes_each_layer_in_backward(assets, tmp_path):
    """The student's layers run twice a step (forward, then again in backward) with the flag."""
    calls = {}
    for flag in (False, True):
        distiller, _, _ = build_distiller(assets, tmp_path / str(flag), gradient_checkpointing=flag)
        layer = distiller.model.student.bert.encoder.layer[0].output.dense  # inside the checkpointed forward
        layer.register_forward_hook(lambda *_, flag=flag: calls.__setitem__(flag, calls.get(flag, 0) + 1))
        first_step(distiller)
    assert (calls[False], calls[True]) == (1, 2)


def test_freeze_flags_keep_those_embeddings_and_train_the_rest(assets, tmp_path):
    _run(assets, tmp_path / "run", "--freeze_pos_embs", "--freeze_token_type_embds", "--max_steps", "3", "--weight_decay", "0.1")
    before = AutoModelForSequenceClassification.from_pretrained(assets["student"]).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final").state_dict()
    frozen = [k for k in before if "position_embeddings" in k or "token_type_embeddings" in k]
    assert len(frozen) == 2 and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])


def test_the_teacher_cache_serves_every_rank_from_the_second_epoch(assets, tmp_path):
    """Batches are dealt to ranks anew every epoch, so each rank's own cache would miss most of
    its next epoch; pooled at each epoch end, 2 processes hit as often as 1: every example of
    epochs 2 and 3 comes from memory (96 examples, 3 epochs: 192 of 288)."""
    import json

    from conftest import TORCHRUN, run_train

    counts = {}
    for processes, batch in ((1, 16), (2, 8)):
        dump = tmp_path / f"{processes}"
        proc = run_train(train_args(assets, dump, "--n_epoch", 3, "--batch_size", batch, "--eval_file", assets["test"]),
                         launcher=TORCHRUN if processes == 2 else None)
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts[processes] = json.load(open(dump / "summary.json"))["teacher_cache"]
        assert "teacher cache: 192 of 288 training examples served from memory (66.7%)" in proc.stdout, proc.stdout[-2000:]
    assert counts[1] == counts[2] == {"training_examples": 288, "served_from_cache": 192, "hit_rate": 192 / 288}
