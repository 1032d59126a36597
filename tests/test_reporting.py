"""A run that reports itself: its plan, one line per evaluation and a summary on stdout; best/,
epoch-N/ and step-N/ folders that load; early stopping; --validation_split; model cards."""

import importlib
import json
import os
import re

import pytest
from transformers import AutoModelForSequenceClassification, pipeline

from conftest import ROOT, read_metrics, run_train, train_args


def test_a_run_prints_its_evaluations_and_summary_and_keeps_the_best(assets, tmp_path):
    dump = tmp_path / "run"
    proc = run_train(train_args(assets, dump, "--n_epoch", 3, "--save_best_metric", "eval_accuracy",
                                "--label_names", "negative,positive"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert f"sequence_classification: teacher {assets['teacher']}" in out
    assert "steps: 18 = 3 epoch(s) x 6" in out and "0.5·KL(T=2) + 0.5·CE(task)" in out
    evals = re.findall(r"^eval step (\d+) \(epoch ([\d.]+)\) \| student loss [\d.]+ accuracy ([\d.]+) .*\| teacher loss .*\| "
                       r"agreement [\d.]+", out, flags=re.M)
    assert [(int(s), float(e)) for s, e, _ in evals] == [(6, 1.0), (12, 2.0), (18, 3.0)]
    records = [r for r in read_metrics(dump) if "eval_accuracy" in r]
    assert all(0 < r["eval_loss"] < 5 and 0 < r["eval_teacher_loss"] < 5 for r in records)
    best = max(records, key=lambda r: r["eval_accuracy"])  # the first of equals: later ones are not better
    assert f"best eval_accuracy {best['eval_accuracy']:.4g} at step {best['step']}: {dump / 'best'}" in out
    assert re.search(r"^done: step 18 \(epoch 3.00\) in .*examples/s$", out, flags=re.M)
    assert f"student: {dump / 'final'} (from_pretrained / pipeline)" in out
    summary = json.load(open(dump / "summary.json"))
    assert summary["best"]["step"] == best["step"] and summary["final"] == str(dump / "final")
    clf = pipeline("text-classification", model=str(dump / "best"))
    assert {clf("good fun great movie")[0]["label"], clf("awful boring bad plot")[0]["label"]} <= {"negative", "positive"}
    card = (dump / "best" / "README.md").read_text()
    assert assets["teacher"] in card and assets["train"] in card and "--save_best_metric eval_accuracy" in card
    assert f"| eval_accuracy | {best['eval_accuracy']:.4f} |" in card
    assert (dump / "final" / "README.md").exists()


def test_save_strategy_keeps_the_newest_loadable_folders(assets, tmp_path):
    dump = tmp_path / "steps"
    proc = run_train(train_args(assets, dump, "--max_steps", 6, "--save_strategy", "steps", "--save_steps", 2,
                                "--save_total_limit", 2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(f for f in os.listdir(dump) if f.startswith("step-")) == ["step-4", "step-6"]
    assert AutoModelForSequenceClassification.from_pretrained(dump / "step-4").config.num_labels == 2
    dump = tmp_path / "epochs"
    proc = run_train(train_args(assets, dump, "--n_epoch", 2, "--save_strategy", "epoch"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(f for f in os.listdir(dump) if f.startswith("epoch-")) == ["epoch-1", "epoch-2"]


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(assets, tmp_path):
    dump = tmp_path / "run"
    # a learning rate too small to move the accuracy: the second evaluation is no better
    proc = run_train(train_args(assets, dump, "--n_epoch", 5, "--learning_rate", 1e-12, "--eval_interval", 2,
                                "--save_best_metric", "accuracy", "--early_stopping_patience", 1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "early stop: no better eval_accuracy in 1 evaluations (best" in proc.stdout
    summary = json.load(open(dump / "summary.json"))
    assert summary["stopped_early"] and summary["step"] == 4 and (dump / "final" / "config.json").exists()


def test_validation_split_holds_out_a_seeded_share(assets, tmp_path):
    runs = []
    for name in ("a", "b"):
        args = train_args(assets, tmp_path / name, "--validation_split", 0.25, "--max_steps", 1)
        del args[args.index("--eval_file") : args.index("--eval_file") + 2]
        proc = run_train(args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "72 training examples" in proc.stdout and "24 evaluation examples (--validation_split 0.25)" in proc.stdout
        runs.append([r for r in read_metrics(tmp_path / name) if "eval_loss" in r][-1])
    assert runs[0]["eval_examples"] == 24 and runs[0]["eval_loss"] == runs[1]["eval_loss"]


def test_student_config_may_be_a_config_folder(assets, tmp_path):
    args = train_args(assets, tmp_path / "run", "--max_steps", 1)
    args[args.index("--student_name") : args.index("--student_name") + 2] = ["--student_config", assets["student"]]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "student weights initialised at random: all (--student_config)" in proc.stdout


def test_every_script_is_a_console_command():
    setup = open(os.path.join(ROOT, "setup.py")).read()
    scripts = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py"))
    for name in scripts:
        assert f'"{name}"' in setup, name
        main = importlib.import_module(f"distillation.cli.{name}").main
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0


@pytest.mark.parametrize("flags,expect", [
    ({}, "5·KL(T=2) + 2·CE(mlm) + 1·hidden cosine (last)"),
    ({"divergence": "jsd"}, "5·JSD(T=2, β=0.5) + 2·CE(mlm)"),
    ({"divergence": "skew_kl", "divergence_beta": 0.2, "temperature": 1.0}, "5·skew KL(T=1, β=0.2) + 2·CE(mlm)"),
    ({"divergence": "tvd", "alpha_mse": 0.5}, "5·TVD(T=2) + 2·CE(mlm) + 0.5·logit MSE"),
])
def test_the_header_names_the_divergence(flags, expect):
    from distillation.config import DistillConfig
    from distillation.objectives import OBJECTIVES
    from distillation.reporting import loss_formula

    cfg = DistillConfig.from_dict({"objective": "mlm", "dump_path": "d", "data_file": "x", "student_name": "s", "teacher_name": "t",
                                   "token_counts": "c", **flags})
    assert loss_formula(cfg, OBJECTIVES["mlm"]).startswith(expect)


def test_a_step_folder_due_at_an_epoch_end_is_saved_once(assets, tmp_path, monkeypatch):
    """6 steps an epoch, --save_steps 3: step-6 falls on the epoch end and is written once (under
    fsdp each save is a full gather of the student)."""
    from conftest import build_distiller
    from distillation.saving import ModelFolders

    saved, save = [], ModelFolders.save
    monkeypatch.setattr(ModelFolders, "save", lambda self, name, *a, **k: saved.append(name) or save(self, name, *a, **k))
    dump = tmp_path / "run"
    distiller, _, _ = build_distiller(assets, dump, batch_size=16, n_epoch=2, save_strategy="steps", save_steps=3)
    os.makedirs(dump)
    distiller.open_log()
    distiller.train()
    assert saved == ["step-3", "step-6", "step-9", "step-12", "final"]
