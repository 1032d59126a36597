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


def test_a_student_smaller_than_the_tokenizer_is_refused(assets, tmp_path, capsys):
    from conftest import VOCAB, make_tokenizer

    other = save_model(BertForSequenceClassification(tiny_bert_config(vocab_size=10)), make_tokenizer(str(tmp_path / "t")), str(tmp_path / "s"))
    _fails(_replace(train_args(assets, tmp_path / "run"), "--student_name", other), capsys,
           f"the teacher has vocab_size={len(VOCAB)}, the student has vocab_size=10, the tokenizer {len(VOCAB)} tokens")
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


def test_an_abbreviated_flag_is_unknown(assets, tmp_path, capsys):
    """argparse would take --learning_rat for --learning_rate; distil() refuses the same name."""
    assert _fails(train_args(assets, tmp_path / "run") + ["--learning_rat", "1e-3"], capsys, "--learning_rat") == \
        "error: --learning_rat: unknown flag"
    assert not (tmp_path / "run").exists()
    from distillation.cli.token_counts import main  # every script's parser is distillation.cli.ArgumentParser

    assert main(["--data_fil", "x"]) == 2 and "unrecognized arguments: --data_fil x" in capsys.readouterr().err


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


# --- every bad row is refused wherever it is: first row or last, with its line and value ------------
def _set(key, value):
    def change(row):
        row[key] = value
        return json.dumps(row)
    return change


def _drop(key):
    def change(row):
        del row[key]
        return json.dumps(row)
    return change


BAD_ROWS = {
    "missing label": (_drop("label"), "no column 'label'"),
    "float label": (_set("label", 1.5), "'label' is 1.5, not an integer or a string"),
    "name among ids": (_set("label", "positive"), "label 'positive' is a label name, but the column holds integer ids"),
    "boolean label": (_set("label", True), "'label' is true, not an integer or a string"),
    "null label": (_set("label", None), "'label' is null"),
    "negative label": (_set("label", -1), "label -1 is outside the 2 labels"),
    "label beyond the teacher's": (_set("label", 5), "label 5 is outside the 2 labels (0-1) of the teacher"),
    "null text": (_set("text", None), "--text_column 'text' is null, not a string"),
    "number as text": (_set("text", 42), "--text_column 'text' is 42, not a string"),
    "missing text": (_drop("text"), "no column 'text'"),
    "broken JSON": (lambda row: json.dumps(row)[:-3], "not valid JSON"),
    "not an object": (lambda row: json.dumps([row["text"]]), "not a JSON object"),
    "NaN label": (lambda row: json.dumps(row).replace(f'"label": {row["label"]}', '"label": NaN'), "NaN is not a JSON value"),
}


@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_a_bad_row_is_refused_with_its_line_wherever_it_is(assets, tmp_path, capsys, kind, position):
    change, expect = BAD_ROWS[kind]
    rows = make_examples(20, seed=3)
    index = 0 if position == "first" else len(rows) - 1
    lines = [json.dumps(r) for r in rows]
    lines[index] = change(dict(rows[index]))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    for flag in ("--data_file", "--eval_file"):
        line = _fails(_replace(train_args(assets, tmp_path / "run"), flag, str(data)), capsys, expect)
        assert line.startswith(f"error: {flag}: '{data}' line {index + 1}: "), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("position", ["first", "last"])
def test_a_short_csv_row_is_refused_with_its_line(assets, tmp_path, capsys, position):
    rows = [f"{r['text']},{r['label']}" for r in make_examples(10, seed=4)]
    rows[0 if position == "first" else -1] = "only a text"
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    line = _fails(_replace(train_args(assets, tmp_path / "run"), "--data_file", str(data)), capsys, "1 fields, the header has 2")
    assert f"line {2 if position == 'first' else 11}:" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,expect", [
    (["--max_seq_length", "100000"], "--max_seq_length 100000: the teacher accepts at most 64 tokens"),
    (["--gradient_accumulation_steps", "7"], "--gradient_accumulation_steps 7: an epoch of --data_file has 6 micro-batches"),
    (["--label_names", "negative,positive,neutral"], "--label_names: 3 names, but the teacher predicts 2 labels"),
    (["--label_names", "a,a"], "--label_names: give each name once"),
    (["--save_best_metric", "eval_bleu"], "--save_best_metric: sequence_classification has no metric 'eval_bleu'"),
    (["--n_gpu", "1"], "--n_gpu 1: no CUDA device is visible"),
    (["--teacher_type", "gpt2"], "--teacher_type gpt2: the teacher is a 'bert' model"),
    (["--validation_split", "0.999"], "--validation_split 0.999: holding out 96 of the 96 examples"),
])
def test_bad_flags_are_refused_before_anything_is_written(assets, tmp_path, capsys, monkeypatch, extra, expect):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # --n_gpu 1 is bad input on a CPU machine
    args = train_args(assets, tmp_path / "run") + extra
    if "--validation_split" in extra:
        del args[args.index("--eval_file") : args.index("--eval_file") + 2]
    _fails(args, capsys, expect)
    assert not (tmp_path / "run").exists()


def test_a_teacher_without_a_trained_head_is_refused(assets, tmp_path, capsys):
    """A bare encoder loaded for classification gets a random head: its soft targets are noise."""
    from transformers import BertModel

    from conftest import make_tokenizer

    bare = save_model(BertModel(tiny_bert_config(layers=2)), make_tokenizer(str(tmp_path / "t")), str(tmp_path / "bare"))
    _fails(_replace(train_args(assets, tmp_path / "run"), "--teacher_name", bare), capsys,
           f"--teacher_name: '{bare}' has no trained weights for classifier.bias, classifier.weight")
    assert not (tmp_path / "run").exists()


def test_student_pretrained_weights_must_hold_every_tensor(assets, tmp_path, capsys):
    import torch

    from transformers import BertForSequenceClassification

    config = tiny_bert_config(layers=2)
    config_file = tmp_path / "student.json"
    config_file.write_text(json.dumps({"model_type": "bert", **config.to_diff_dict()}))
    state = BertForSequenceClassification(config).state_dict()
    partial = {k: v for k, v in state.items() if "layer.1." not in k}
    torch.save(partial, tmp_path / "partial.pth")
    torch.save(state, tmp_path / "full.pth")
    args = train_args(assets, tmp_path / "run", "--student_pretrained_weights", tmp_path / "partial.pth", "--max_steps", 1)
    args[args.index("--student_name") : args.index("--student_name") + 2] = ["--student_config", str(config_file)]
    _fails(args, capsys, "lacks 16 of the student's tensors (bert.encoder.layer.1.")
    assert not (tmp_path / "run").exists()
    args[args.index("--student_pretrained_weights") + 1] = str(tmp_path / "full.pth")
    assert train_in_process(args) == 0
    trained = BertForSequenceClassification.from_pretrained(tmp_path / "run" / "final").state_dict()
    # loaded, then trained one step: close to the file's weights, far from a fresh init
    assert torch.allclose(trained["bert.encoder.layer.1.output.dense.weight"], state["bert.encoder.layer.1.output.dense.weight"], atol=1e-3)


def test_a_model_type_without_the_objectives_class_is_refused(assets, tmp_path, capsys):
    """No DistilBERT is a causal LM: from_pretrained's ValueError (a traceback) becomes one line."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from conftest import VOCAB, make_tokenizer

    config = DistilBertConfig(vocab_size=len(VOCAB), dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64)
    student = save_model(DistilBertForSequenceClassification(config), make_tokenizer(str(tmp_path / "t")), str(tmp_path / "db"))
    text = tmp_path / "text.txt"
    text.write_text("the movie was good\n" * 20)
    _fails(["--objective", "clm", "--student_name", student, "--data_file", text, "--dump_path", tmp_path / "run"], capsys,
           "--student_name is a 'distilbert' model, which transformers has no CausalLM class of: --objective clm cannot train it")
    assert not (tmp_path / "run").exists()
