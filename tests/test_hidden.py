"""Hidden-state losses: the layer map, the projection between widths, and their values."""

import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import build_distiller, first_step_grads, read_metrics, run_train, train_args
from distillation.errors import InputError
from distillation.hidden import default_layer_map, parse_layer_map


def test_default_layer_map_spreads_evenly_and_ends_last_to_last():
    assert default_layer_map(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert default_layer_map(6, 12) == [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]
    assert default_layer_map(2, 2) == [(0, 0), (1, 1)]


def test_layer_map_parsing_and_errors():
    assert parse_layer_map("0:1,1:3,2:5", 3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert parse_layer_map("uniform", 2, 4) == [(0, 1), (1, 3)]
    assert parse_layer_map("last", 2, 4) == [(1, 3)]  # the reference's alpha_cos: last hidden layers only
    for bad, what in (("0-1", "student:teacher"), ("0:9", "out of range"), ("3:1", "out of range"), ("a:b", "student:teacher"),
                      ("0:1,0:1", "twice")):
        with pytest.raises(InputError, match="--layer_map") as err:
            parse_layer_map(bad, 3, 6)
        assert what in str(err.value)


def test_projection_is_trained_and_losses_match_hand_computation(assets, tmp_path):
    distiller, data, _ = build_distiller(
        assets, tmp_path, student_name=assets["student_narrow"], alpha_ce=0, alpha_task=0,
        alpha_hidden_mse=1, alpha_cos=1, layer_map="uniform", batch_size=8, gradient_accumulation_steps=1, warmup_prop=0,
    )
    assert distiller.layer_pairs == [(0, 1), (1, 3)]
    proj = distiller.model.projection
    assert (proj.in_features, proj.out_features) == (16, 32)
    batch = distiller.objective.collate([data[i] for i in distiller._batches(0)[0]])
    terms = distiller._loss_terms(batch)
    # by hand: project the student's layer outputs, compare with the teacher's at real tokens
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    s_h = distiller.model.student(**inputs, output_hidden_states=True).hidden_states
    t_h = distiller.teacher.model(**inputs, output_hidden_states=True).hidden_states
    mse = cos = 0.0
    for s, t in distiller.layer_pairs:
        a, b = proj(s_h[s + 1]), t_h[t + 1]
        for i in range(a.shape[0]):
            n = int(batch["attention_mask"][i].sum())
            mse += ((a[i, :n] - b[i, :n]) ** 2).mean(dim=1).sum()
            cos += (1 - (a[i, :n] * b[i, :n]).sum(-1) / (a[i, :n].norm(dim=-1) * b[i, :n].norm(dim=-1))).sum()
    assert terms["hidden_mse"].item() == pytest.approx(mse.item() / 2, rel=1e-4)
    assert terms["cos"].item() == pytest.approx(cos.item() / 2, rel=1e-4)
    before = proj.weight.detach().clone()
    grads = first_step_grads(distiller)
    assert grads["projection.weight"].abs().sum() > 0
    assert not torch.equal(before, proj.weight)


def test_narrow_student_run_saves_projection_beside_the_student(assets, tmp_path):
    args = train_args(assets, tmp_path / "run", "--alpha_hidden_mse", 1, "--alpha_cos", 1, "--log_interval", 1)
    args[args.index("--student_name") + 1] = assets["student_narrow"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = [r for r in read_metrics(tmp_path / "run") if "loss" in r][-1]
    assert {"loss_hidden_mse", "loss_cos", "loss_ce", "loss_task"} <= set(last) and "loss_mse" not in last
    final = tmp_path / "run" / "final"
    projection = load_file(final / "projection.safetensors")
    assert projection["weight"].shape == (32, 16)
    assert not any("projection" in k for k in load_file(final / "model.safetensors"))


def test_hidden_states_are_only_computed_for_hidden_losses(assets, tmp_path):
    distiller, data, _ = build_distiller(assets, tmp_path, batch_size=8, gradient_accumulation_steps=1)
    seen = []
    for model in (distiller.model.student, distiller.teacher.model):
        model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("output_hidden_states")), with_kwargs=True)
    first_step_grads(distiller)
    assert seen == [False, False]


def test_different_widths_without_projection_is_refused(assets, tmp_path):
    args = train_args(assets, tmp_path / "run", "--alpha_hidden_mse", 1, "--no-hidden_projection")
    args[args.index("--student_name") + 1] = assets["student_narrow"]
    proc = run_train(args)
    assert proc.returncode == 2 and "--no-hidden_projection" in proc.stderr.strip().splitlines()[-1]
    args = train_args(assets, tmp_path / "run", "--alpha_cos", 1, "--layer_map", "0:7")
    proc = run_train(args)
    assert proc.returncode == 2 and "--layer_map" in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "run")
