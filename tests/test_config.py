"""The options: reference flags with their reference meaning (or a refusal), defaults per
objective, --help with every real default, the JSON file checked like the command line."""

import json
import re

import pytest

from distillation.cli.options import build_parser
from distillation.cli.options import config_from_cli
from distillation.config import OBJECTIVE_DEFAULTS, DistillConfig
from distillation.errors import InputError

BASE = ["--dump_path", "d", "--data_file", "x.jsonl", "--student_name", "s"]
MLM = BASE + ["--token_counts", "c.pickle", "--teacher_name", "t"]


def cfg_of(*argv):
    return config_from_cli(list(BASE) + [str(a) for a in argv])


def test_flags_override_the_config_file_with_the_same_names(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"alpha_clm": 2.0, "temperature": 3.0, "batch_size": 7, "objective": "clm", "teacher_name": "t",
                                "n_gpu": 0, "local_rank": -1}))
    cfg = config_from_cli(["--config", str(path), "--temperature", "4", "--alpha_clm", "1.5"] + BASE)
    assert (cfg.temperature, cfg.batch_size, cfg.alpha_task, cfg.alpha_clm, cfg.objective, cfg.n_gpu) == (4.0, 7, 1.5, 1.5, "clm", 0)


def test_the_reference_distilbert_command_weighs_the_mlm_loss():
    """The reference README's command: --alpha_clm 0.0 beside --alpha_mlm 2.0 (it required it)."""
    argv = ["--mlm", "--alpha_ce", "5.0", "--alpha_mlm", "2.0", "--alpha_cos", "1.0", "--alpha_clm", "0.0", "--initializer_range", "0.02"]
    for order in (argv, argv[:1] + argv[7:] + argv[1:7]):  # whatever the order of the flags
        cfg = config_from_cli(MLM + order)
        assert (cfg.objective, cfg.alpha_task, cfg.alpha_mlm, cfg.alpha_clm, cfg.alpha_ce, cfg.alpha_cos) == ("mlm", 2.0, 2.0, 0.0, 5.0, 1.0)


@pytest.mark.parametrize("argv,expect", [
    (["--mlm", "--alpha_mlm", "2", "--alpha_clm", "1"], "--alpha_clm 1.0 weighs the CLM loss, which --objective mlm does not have"),
    (["--objective", "clm", "--alpha_mlm", "2"], "--alpha_mlm 2.0 weighs the MLM loss, which --objective clm does not have"),
    (["--alpha_mlm", "1"], "--objective sequence_classification does not have"),
    (["--mlm", "--alpha_mlm", "2", "--alpha_task", "1"], "--alpha_mlm 2.0 and --alpha_task 1.0 both weigh the MLM loss"),
    (["--mlm", "--objective", "clm"], "--mlm asks for the MLM objective"),
    (["--group_by_size"], "this bare flag turned length grouping OFF"),
    (["--fp16", "--fp16_opt_level", "O2"], "--fp16_opt_level O2"),
    (["--layer_map", "uniform"], "--layer_map uniform needs --alpha_cos or --alpha_hidden_mse"),
])
def test_reference_flags_that_would_mean_something_else_are_refused(argv, expect):
    with pytest.raises(InputError, match=re.escape(expect)):
        config_from_cli(MLM + argv)


def test_reference_spellings_fold_into_ours():
    cfg = config_from_cli(MLM + ["--mlm", "--fp16", "--fp16_opt_level", "O1", "--local_rank", "0", "--no-group_by_size"])
    assert (cfg.objective, cfg.precision, cfg.group_by_size, cfg.alpha_task) == ("mlm", "fp16", False, 2.0)
    assert cfg_of("--group_by_size", "true").group_by_size and not cfg_of("--group_by_size", "false").group_by_size
    # The reference without --mlm trains a causal LM: a reference command (student/teacher type) keeps that meaning.
    assert config_from_cli(BASE + ["--student_type", "gpt2", "--teacher_type", "gpt2", "--teacher_name", "t"]).objective == "clm"
    assert cfg_of().objective == "sequence_classification"


def test_defaults_follow_the_objective_and_are_recorded():
    cls = cfg_of("--teacher_name", "t")
    mlm = config_from_cli(MLM + ["--mlm"])
    clm = cfg_of("--objective", "clm", "--teacher_name", "t")
    for name, values in OBJECTIVE_DEFAULTS.items():
        assert (getattr(cls, name), getattr(mlm, name), getattr(clm, name)) == values, name
    # mlm is the reference's DistilBERT recipe
    assert (mlm.learning_rate, mlm.batch_size, mlm.gradient_accumulation_steps, mlm.max_grad_norm) == (5e-4, 5, 50, 5.0)
    assert (mlm.alpha_ce, mlm.alpha_task, mlm.alpha_cos) == (5.0, 2.0, 1.0)
    assert cls.cache_teacher_logits and not mlm.cache_teacher_logits and cls.eval_batch_size == 64
    assert "learning_rate" in cls.defaulted and "learning_rate" not in cfg_of("--learning_rate", "1e-3").defaulted
    # without a teacher there is nothing to distil: the teacher losses' defaults are 0
    plain = cfg_of()
    assert (plain.alpha_ce, plain.alpha_cos, plain.alpha_task, plain.cache_teacher_logits) == (0.0, 0.0, 0.5, False)


def test_parameters_json_reads_back_to_the_same_run(tmp_path):
    for argv in (["--teacher_name", "t", "--precision", "bf16", "--no-group_by_size"], MLM[len(BASE):] + ["--mlm", "--alpha_mlm", "3"]):
        cfg = cfg_of(*argv)
        cfg.save(tmp_path / "p.json")
        again = config_from_cli(["--config", str(tmp_path / "p.json")])
        assert again == cfg


@pytest.mark.parametrize("values,expect", [
    ({"fp16": "false"}, "'fp16' must be true or false (got \"false\")"),
    ({"batch_size": "16"}, "'batch_size' must be an integer or null (got \"16\")"),
    ({"batch_size": 3.5}, "'batch_size' must be an integer or null (got 3.5)"),
    ({"learning_rate": True}, "'learning_rate' must be a number or null (got true)"),
    ({"precision": "fp8"}, "'precision' must be one of fp32, bf16, fp16"),
    ({"alpha_kd": 1}, "unknown option 'alpha_kd'"),
    ({"num_train_epochs": 3}, "unknown option 'num_train_epochs' (the Trainer's num_train_epochs is --n_epoch here)"),
])
def test_config_file_values_of_the_wrong_type_are_refused(tmp_path, values, expect):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(InputError, match=re.escape(f"--config {path}: {expect}")):
        config_from_cli(["--config", str(path)] + BASE)


@pytest.mark.parametrize("argv,flag", [
    (["--alpha_ce", "-1", "--teacher_name", "t"], "--alpha_ce"),
    (["--alpha_task", "0"], "nothing to train"),
    (["--alpha_ce", "0.5"], "--alpha_ce 0.5 needs a teacher"),
    (["--temperature", "0", "--teacher_name", "t"], "--temperature"),
    (["--temperature", "nan", "--teacher_name", "t"], "--temperature"),
    (["--learning_rate", "inf"], "--learning_rate"),
    (["--objective", "mlm", "--teacher_name", "t"], "--token_counts"),
    (["--precision", "fp8", "--teacher_name", "t"], "--precision"),
    (["--cache_teacher_logits", "--teacher_name", "t", "--alpha_cos", "1"], "--cache_teacher_logits"),
    (["--student_config", "c.json", "--teacher_name", "t"], "--student_name"),
    (["--student_pretrained_weights", "w.pth"], "--student_pretrained_weights"),
    (["--validation_split", "0.1", "--eval_file", "e.jsonl"], "--validation_split"),
    (["--validation_split", "1"], "--validation_split"),
    (["--early_stopping_patience", "2"], "--early_stopping_patience needs --save_best_metric"),
    (["--save_best_metric", "accuracy"], "--save_best_metric eval_accuracy needs evaluation data"),
    (["--max_seq_length", "2"], "--max_seq_length"),
    (["--warmup_prop", "1.5"], "--warmup_prop"),
    (["--n_gpu", "-1"], "--n_gpu"),
    (["--divergence_beta", "0.3", "--teacher_name", "t"], "--divergence_beta 0.3: --divergence forward_kl has no β"),
    (["--divergence", "skew_kl", "--divergence_beta", "1", "--teacher_name", "t"],
     "--divergence_beta must be in [0, 1) for --divergence skew_kl"),
    (["--divergence", "jsd", "--divergence_beta", "1.5", "--teacher_name", "t"], "--divergence_beta must be in [0, 1] for --divergence jsd"),
    (["--loss_chunk_rows", "8", "--teacher_name", "t"], "--loss_chunk_rows 8: chunked losses are implemented for clm only"),
    (["--objective", "mlm", "--token_counts", "c", "--teacher_logits", "c"], "--teacher_logits: mlm re-masks every step"),
    (["--objective", "clm", "--teacher_logits", "c", "--teacher_name", "t"], "give one of --teacher_name, --teacher_logits and --teacher_url"),
    (["--objective", "clm", "--teacher_logits", "c", "--alpha_cos", "1"], "--teacher_logits: --alpha_cos needs the teacher's"),
    (["--objective", "clm", "--teacher_logits", "c", "--loss_chunk_rows", "8"], "--teacher_logits: --loss_chunk_rows needs"),
    (["--objective", "clm", "--teacher_url", "u", "--teacher_name", "t"], "give --teacher_name or --teacher_url, not both"),
    (["--teacher_url", "u"], "--teacher_url: --objective sequence_classification needs the teacher's logits of its own head"),
    (["--objective", "clm", "--teacher_url", "u", "--alpha_cos", "1"], "--teacher_url: --alpha_cos is not available"),
    (["--objective", "clm", "--teacher_url", "u", "--on_policy_fraction", "0.5", "--alpha_ce", "0"],
     "--on_policy_fraction 0.5: needs --teacher_name (or --teacher_url, --teachers) and --alpha_ce > 0"),
    (["--objective", "clm", "--teacher_url", "u", "--teacher_top_k", "0"], "--teacher_top_k must be >= 1"),
])
def test_validation_names_the_flag(argv, flag):
    with pytest.raises(InputError, match=re.escape(flag)):
        cfg_of(*argv)


def test_trainer_habits_get_our_name():
    with pytest.raises(InputError, match=re.escape("--per_device_train_batch_size: unknown flag (the Trainer's "
                                                   "per_device_train_batch_size is --batch_size here)")):
        cfg_of("--per_device_train_batch_size", "8")


def test_help_shows_every_real_default():
    text = build_parser(DistillConfig).format_help()
    assert "(default: None)" not in text
    options = re.findall(r"^  (--\w+)", text, flags=re.M)
    assert len(options) > 60
    for match in re.finditer(r"^  (--\w+)(.*?)(?=^  --|\Z)", text, flags=re.M | re.S):
        if match.group(1) not in ("--help", "--config"):
            assert "(default:" in match.group(2), match.group(1)
    assert "(default: 0.0002 for sequence_classification, 0.0005 for mlm, 0.0003 for clm)" in " ".join(text.split())


@pytest.mark.parametrize("divergence,beta", [("forward_kl", None), ("reverse_kl", None), ("tvd", None), ("jsd", 0.5), ("skew_kl", 0.1)])
def test_divergence_beta_defaults_per_divergence_and_is_recorded(divergence, beta):
    cfg = cfg_of("--teacher_name", "t", "--divergence", divergence)
    assert cfg.divergence_beta == beta and cfg.to_dict()["divergence_beta"] == beta
    assert cfg_of("--teacher_name", "t", "--divergence", "jsd", "--divergence_beta", "0.9").divergence_beta == 0.9
