"""The options: JSON file, flags on top, the reference's aliases, JSON round trip."""

import json

import pytest

from distillation.config import DistillConfig
from distillation.errors import InputError

BASE = ["--dump_path", "d", "--data_file", "x.jsonl", "--student_name", "s"]


def test_flags_override_the_config_file_and_aliases_fold(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"alpha_mlm": 2.0, "temperature": 3.0, "batch_size": 7, "objective": "clm", "teacher_name": "t"}))
    cfg = DistillConfig.from_cli(["--config", str(path), "--temperature", "4", "--alpha_clm", "1.5"] + BASE)
    assert (cfg.temperature, cfg.batch_size, cfg.alpha_task, cfg.objective) == (4.0, 7, 1.5, "clm")
    assert cfg.gradient_accumulation_steps == 50  # the reference's default for language modelling


def test_reference_flags_keep_working():
    cfg = DistillConfig.from_cli(BASE + ["--mlm", "--token_counts", "c.pickle", "--fp16", "--teacher_name", "t", "--alpha_mlm", "2"])
    assert (cfg.objective, cfg.precision, cfg.alpha_task) == ("mlm", "fp16", 2.0)
    cfg = DistillConfig.from_cli(BASE + ["--alpha_ce", "0", "--local_rank", "0"])
    assert cfg.teacher_name is None and cfg.gradient_accumulation_steps == 1 and cfg.group_by_size


def test_json_round_trip(tmp_path):
    cfg = DistillConfig.from_cli(BASE + ["--teacher_name", "t", "--precision", "bf16", "--no-group_by_size"])
    cfg.save(tmp_path / "p.json")
    again = DistillConfig.from_cli(["--config", str(tmp_path / "p.json")])
    assert again == cfg


@pytest.mark.parametrize("argv,flag", [
    (["--alpha_ce", "-1", "--teacher_name", "t"], "--alpha_ce"),
    (["--alpha_ce", "0", "--alpha_task", "0"], "nothing to train"),
    (["--temperature", "0", "--teacher_name", "t"], "--temperature"),
    (["--objective", "mlm", "--teacher_name", "t"], "--token_counts"),
    (["--precision", "fp8", "--teacher_name", "t"], "--precision"),
    (["--cache_teacher_logits", "--teacher_name", "t", "--alpha_cos", "1"], "--cache_teacher_logits"),
    (["--student_config", "c.json", "--teacher_name", "t"], "--student_name"),
])
def test_validation_names_the_flag(argv, flag):
    with pytest.raises(InputError, match=flag):
        DistillConfig.from_cli(BASE + argv)
