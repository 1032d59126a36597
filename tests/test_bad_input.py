"""Bad input: one line naming the flag or file, exit code 2, nothing written or overwritten."""

import json
import os

import pytest
from transformers import BertForSequenceClassification

from conftest import make_examples, run_train, save_model, tiny_bert_config, train_args, train_in_process, write_jsonl


def _fails(argv, capsys, expect):
    """Run train.py's main in-process; assert exit 2, one stderr line that mentions `expect`."""
    capsys.readouterr()
    code = train_in_process(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expect in err[0], err[0]
    return err[0]


def _replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_existing_dump_path_without_force_is_left_alone(assets, tmp_path, capsys):
    dump = tmp_path / "run"
    dump.mkdir()
    (dump / "keep.txt").write_text("precious")
    _fails(train_args(assets, dump), capsys, "--dump_path")
    assert os.listdir(dump) == ["keep.txt"] and (dump / "keep.txt").read_text() == "precious"


def test_label_outside_num_labels(assets, tmp_path, capsys):
    rows = make_examples(20, seed=3)
    rows[5]["label"] = 4
    data = write_jsonl(str(tmp_path / "bad.jsonl"), rows)
    _fails(_replace(train_args(assets, tmp_path / "run"), "--data_file", data), capsys, "num_labels")
    assert not (tmp_path / "run").exists()


def test_teacher_and_student_num_labels_disagree(assets, tmp_path, capsys):
    from conftest import make_tokenizer

    three = save_model(BertForSequenceClassification(tiny_bert_config(num_labels=3)), make_tokenizer(str(tmp_path / "t")), str(tmp_path / "s3"))
    _fails(_replace(train_args(assets, tmp_path / "run"), "--student_name", three), capsys, "num_labels")
    assert not (tmp_path / "run").exists()


def test_vocabulary_mismatch(assets, tmp_path, capsys):
    from conftest import make_tokenizer

    other = save_model(BertForSequenceClassification(tiny_bert_config(vocab_size=99)), make_tokenizer(str(tmp_path / "t")), str(tmp_path / "s"))
    _fails(_replace(train_args(assets, tmp_path / "run"), "--student_name", other), capsys, "vocab")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_data_file(assets, tmp_path, capsys, content):
    data = tmp_path / "empty.jsonl"
    data.write_text(content)
    _fails(_replace(train_args(assets, tmp_path / "run"), "--data_file", str(data)), capsys, str(data))
    assert not (tmp_path / "run").exists()


def test_missing_files(assets, tmp_path, capsys):
    _fails(_replace(train_args(assets, tmp_path / "run"), "--data_file", str(tmp_path / "nope.jsonl")), capsys, "--data_file")
    _fails(_replace(train_args(assets, tmp_path / "run"), "--eval_file", str(tmp_path / "nope.csv")), capsys, "--eval_file")
    _fails(_replace(train_args(assets, tmp_path / "run"), "--teacher_name", str(tmp_path / "nope")), capsys, "--teacher_name")
    assert not (tmp_path / "run").exists()


def test_unknown_objective_and_flag(assets, tmp_path, capsys):
    _fails(_replace(train_args(assets, tmp_path / "run"), "--objective", "translation"), capsys, "--objective")
    _fails(train_args(assets, tmp_path / "run") + ["--alpha_kd", "1"], capsys, "--alpha_kd")
    assert not (tmp_path / "run").exists()


def test_malformed_config_json(assets, tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text('{"alpha_ce": 0.5,')
    _fails(train_args(assets, tmp_path / "run") + ["--config", str(bad)], capsys, str(bad))
    bad.write_text(json.dumps({"alpha_kd": 1}))
    _fails(train_args(assets, tmp_path / "run") + ["--config", str(bad)], capsys, "alpha_kd")
    assert not (tmp_path / "run").exists()


def test_missing_column_and_teacherless_distillation(assets, tmp_path, capsys):
    _fails(train_args(assets, tmp_path / "run") + ["--text_column", "review"], capsys, "--text_column")
    args = train_args(assets, tmp_path / "run")
    del args[args.index("--teacher_name") : args.index("--teacher_name") + 2]
    _fails(args + ["--alpha_ce", "0.5"], capsys, "--teacher_name")
    assert not (tmp_path / "run").exists()


def test_exit_code_two_from_the_command_line(assets, tmp_path):
    proc = run_train(_replace(train_args(assets, tmp_path / "run"), "--objective", "nope"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --objective")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
