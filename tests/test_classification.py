"""Sequence-classification distillation end to end, and the step's maths against autograd."""

import copy
import glob
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DistilBertConfig, pipeline

from conftest import build_distiller, first_step_grads, make_examples, read_metrics, run_train, train_args, write_jsonl
from distillation.data.text_classification import collate_classification


def test_cli_run_leaves_a_complete_run_folder(assets, tmp_path):
    dump = tmp_path / "run"
    args = train_args(assets, dump, "--force", "--batch_size", "32", "--alpha_ce", "0.5", "--alpha_task", "0.5",
                      "--temperature", "2", "--learning_rate", "1e-4", "--log_interval", "2")
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr
    for name in ("parameters.json", "metrics.jsonl", "summary.json", "final/config.json", "checkpoint/complete.json"):
        assert os.path.exists(dump / name), name
    assert json.load(open(dump / "parameters.json"))["alpha_ce"] == 0.5
    records = read_metrics(dump)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    assert train and evals
    for key in ("step", "epoch", "loss", "loss_ce", "loss_task", "lr", "examples_per_s", "tokens_per_s"):
        assert key in train[-1], key
    for key in ("eval_accuracy", "eval_macro_f1", "eval_teacher_agreement"):
        assert 0.0 <= evals[-1][key] <= 1.0, key
    assert train[-1]["loss"] == pytest.approx(0.5 * train[-1]["loss_ce"] + 0.5 * train[-1]["loss_task"])
    events = EventAccumulator(glob.glob(str(dump / "log" / "train" / "events.*"))[0])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_ce", "train/loss_task", "train/lr", "eval/eval_accuracy"} <= tags
    summary = json.load(open(dump / "summary.json"))
    assert summary["student_parameters"] < summary["teacher_parameters"]
    model = AutoModelForSequenceClassification.from_pretrained(dump / "final")
    assert model.config.num_labels == 2
    clf = pipeline("text-classification", model=str(dump / "final"))
    assert clf("good fun movie")[0]["label"] in model.config.id2label.values()


def test_eval_metrics_against_hand_computation():
    """Accuracy, macro-F1 and eval loss from a confusion worked out by hand (not by our report code)."""
    from distillation.objectives.classification import SequenceClassification, macro_f1

    label = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 2])
    # class 0: tp 1, fp 1, fn 1 -> F1 2/4; class 1: tp 2, fp 1, fn 0 -> 4/5; class 2: tp 2, fp 0, fn 1 -> 4/5
    assert macro_f1(pred, label) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    # a class only predicted counts with F1 0: class 0 tp 1, fn 1 -> 2/3; class 3 fp 1 -> 0
    assert macro_f1(torch.tensor([0, 3]), torch.tensor([0, 0])) == pytest.approx(1 / 3)
    logits = torch.full((7, 3), -2.0)
    logits[torch.arange(7), pred] = 1.0
    objective = SequenceClassification.__new__(SequenceClassification)
    metrics = objective.eval_metrics(objective.eval_batch(logits, None, {"labels": label}))
    right = math.log(1 + 2 * math.exp(-3))  # -log softmax of the 1.0 logit among two -2.0 ones
    assert metrics["accuracy"] == pytest.approx(5 / 7) and metrics["examples"] == 7
    assert metrics["loss"] == pytest.approx((5 * right + 2 * (1.0 - (-2.0) + right)) / 7, rel=1e-5)


def test_distilbert_student_from_config_under_bert_teacher(assets, tmp_path):
    """Families that share a vocabulary: the DistilBERT student takes no token_type_ids."""
    config = DistilBertConfig(vocab_size=25, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    cfg_file = tmp_path / "distilbert.json"
    cfg_file.write_text(json.dumps(config.to_dict()))
    args = train_args(assets, tmp_path / "run", "--alpha_ce", "1", "--alpha_task", "0", "--log_interval", "1")
    args[args.index("--student_name") : args.index("--student_name") + 2] = ["--student_config", str(cfg_file)]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    assert model.config.model_type == "distilbert" and model.config.num_labels == 2
    losses = [r["loss_ce"] for r in read_metrics(tmp_path / "run") if "loss_ce" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_string_labels_round_trip(assets, tmp_path):
    names = ("negative", "positive")
    train = write_jsonl(str(tmp_path / "train.jsonl"), make_examples(64, seed=5, names=names))
    test = write_jsonl(str(tmp_path / "test.jsonl"), make_examples(16, seed=6, names=names))
    args = ["--objective", "sequence_classification", "--student_name", assets["student"], "--data_file", train,
            "--eval_file", test, "--dump_path", str(tmp_path / "run"), "--alpha_ce", "0", "--alpha_task", "1",
            "--n_epoch", "1", "--batch_size", "16"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert model.config.id2label == {0: "negative", 1: "positive"}
    clf = pipeline("text-classification", model=str(tmp_path / "run" / "final"))
    assert clf("awful boring plot")[0]["label"] in names


def test_accumulated_step_equals_one_big_batch_and_hand_written_loss(assets, tmp_path):
    accumulated, data, tokenizer = build_distiller(assets, tmp_path / "a", batch_size=2, gradient_accumulation_steps=4)
    single, _, _ = build_distiller(assets, tmp_path / "b", batch_size=8, gradient_accumulation_steps=1)
    g_acc, g_one = first_step_grads(accumulated), first_step_grads(single)

    # Independent computation: the loss of the 8 examples, written out, through autograd.
    student = AutoModelForSequenceClassification.from_pretrained(assets["student"])
    teacher = AutoModelForSequenceClassification.from_pretrained(assets["teacher"]).eval()
    idx = single._batches(0)[0]
    batch = collate_classification([data[i] for i in idx], tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    s, t = student(**inputs).logits, teacher(**inputs).logits.detach()
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    (0.7 * kl + 0.3 * F.cross_entropy(s, batch["labels"])).backward()
    assert g_acc.keys() == g_one.keys() and len(g_acc) > 10
    for name, p in student.named_parameters():
        key = "student." + name
        assert torch.allclose(g_acc[key], g_one[key], atol=1e-6, rtol=1e-4), name
        assert torch.allclose(g_one[key], p.grad, atol=1e-6, rtol=1e-4), name


def test_teacher_stays_frozen_in_eval_mode(assets, tmp_path):
    distiller, _, _ = build_distiller(assets, tmp_path / "c", batch_size=8, gradient_accumulation_steps=1)
    before = copy.deepcopy(distiller.teacher.model.state_dict())
    first_step_grads(distiller)
    assert not distiller.teacher.model.training
    assert all(not p.requires_grad and p.grad is None for p in distiller.teacher.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in distiller.teacher.model.state_dict().items())
    assert not any(p is q for p in distiller.teacher.model.parameters() for g in distiller.optimizer.param_groups for q in g["params"])
    assert distiller.model.student.training


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load_as_fp32(assets, tmp_path, stored):
    """Most LLM checkpoints are stored in bf16, and transformers 5 would keep that dtype: AdamW
    would then update half-precision weights. Both models must load as fp32, holding exactly the
    stored values."""
    folders = {}
    for name in ("teacher", "student"):
        model = AutoModelForSequenceClassification.from_pretrained(assets[name]).to(stored)
        folders[name] = str(tmp_path / name)
        model.save_pretrained(folders[name])
        AutoTokenizer.from_pretrained(assets[name]).save_pretrained(folders[name])
    distiller, _, _ = build_distiller(assets, tmp_path / "run", teacher_name=folders["teacher"], student_name=folders["student"])
    for name, model in (("teacher", distiller.teacher.model), ("student", distiller.model.student)):
        stored_model = AutoModelForSequenceClassification.from_pretrained(folders[name], dtype=stored)
        expected = {k: v.float() for k, v in stored_model.state_dict().items()}
        for key, value in model.state_dict().items():
            assert value.dtype == torch.float32, (name, key, value.dtype)
            assert torch.equal(value, expected[key]), (name, key)

    config = AutoConfig.from_pretrained(folders["student"])
    assert config.dtype == stored
    config.save_pretrained(tmp_path / "config")
    distiller, _, _ = build_distiller(assets, tmp_path / "run2", student_name=None, student_config=str(tmp_path / "config"))
    assert {p.dtype for p in distiller.model.parameters()} == {torch.float32}
