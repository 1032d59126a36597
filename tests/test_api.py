"""`distil(...)` from Python (distillation/api.py): the same runs as scripts/train.py, over models
and data in memory, with the command line's errors raised as InputError."""

import copy
import json
import os
import pathlib
import signal

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import read_metrics, train_args, train_in_process
from lm_helpers import single_thread  # noqa: F401 - a fixture
from distillation import InputError, distil

pytestmark = pytest.mark.usefixtures("single_thread")


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_two_calls_in_one_process_equal_two_command_line_runs(assets, tmp_path):
    """In-memory teacher, student, tokenizer and rows; two calls (seeds 0 and 1) in one process:
    each call's metrics at every log line and its final weights equal those of scripts/train.py
    run in this process with the same flags on the files; the student object is trained in place."""
    teacher = AutoModelForSequenceClassification.from_pretrained(assets["teacher"])
    tokenizer = AutoTokenizer.from_pretrained(assets["teacher"])
    train, test = _rows(assets["train"]), _rows(assets["test"])
    for seed in (0, 1):
        student = AutoModelForSequenceClassification.from_pretrained(assets["student"])
        before = copy.deepcopy(student.state_dict())
        result = distil(teacher=teacher, student=student, train_data=train, eval_data=test, tokenizer=tokenizer,
                        objective="sequence_classification", dump_path=str(tmp_path / f"api{seed}"), n_epoch=1, batch_size=16,
                        learning_rate=1e-3, seed=seed, log_interval=1)
        assert train_in_process(train_args(assets, tmp_path / f"cli{seed}", "--seed", seed, "--log_interval", 1)) == 0
        api, cli = _without_timings(tmp_path / f"api{seed}"), _without_timings(tmp_path / f"cli{seed}")
        assert len(api) > 3 and api == cli
        assert result.student is student
        cli_student = AutoModelForSequenceClassification.from_pretrained(tmp_path / f"cli{seed}" / "final")
        for key, value in cli_student.state_dict().items():
            assert torch.equal(student.state_dict()[key], value), key
        assert not torch.equal(student.state_dict()["classifier.weight"], before["classifier.weight"])
        assert result.summary["final"] == str(tmp_path / f"api{seed}" / "final") and "eval_accuracy" in result.summary
        assert result.tokenizer is tokenizer
    assert read_metrics(tmp_path / "api0")[-1] != read_metrics(tmp_path / "api1")[-1]  # the second call did its own run


def _without_timings(dump):
    drop = ("examples_per_s", "tokens_per_s", "wall_time_s", "elapsed_s", "memory_mb")
    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(dump)]


def test_a_datasets_dataset_trains_as_its_rows(assets, tmp_path):
    import datasets

    rows = _rows(assets["train"])
    for name, data in (("rows", rows), ("dataset", datasets.Dataset.from_list(rows))):
        distil(teacher=assets["teacher"], student=assets["student"], train_data=data, objective="sequence_classification",
               dump_path=str(tmp_path / name), n_epoch=1, batch_size=16, log_interval=1)
    assert len(_without_timings(tmp_path / "rows")) > 3
    assert _without_timings(tmp_path / "rows") == _without_timings(tmp_path / "dataset")


@pytest.mark.parametrize("options, message", [
    ({"batch_sise": 16}, "distil(): unknown option 'batch_sise'"),
    ({"output_dir": "x"}, "distil(): unknown option 'output_dir' (the Trainer's output_dir is --dump_path here)"),
    ({"batch_size": "16"}, "distil(): 'batch_size' must be an integer or null (got \"16\")"),
    ({"strategy": "zero3"}, "distil(): 'strategy' must be one of ddp, fsdp (got \"zero3\")"),
    ({"label_column": "sentiment"}, "--data_file: "),
    ({"data_file": "x.jsonl"}, "distil(): give train_data= rather than data_file="),
    ({"teacher": "TOKENIZER"}, "distil(): teacher= must be a name, a folder or a transformers PreTrainedModel (got BertTokenizer"),
    ({"student": "MODEL", "tokenizer": None}, "distil(): give tokenizer= with an in-memory student"),
])
def test_bad_options_raise_the_command_line_message_and_write_nothing(assets, tmp_path, capsys, options, message):
    dump = tmp_path / "run"
    values = {"teacher": assets["teacher"], "student": assets["student"], "train_data": _rows(assets["train"]),
              "objective": "sequence_classification", "dump_path": str(dump), **options}
    for role, stand_in in (("teacher", "TOKENIZER"), ("student", "MODEL")):
        if values.get(role) == "TOKENIZER":
            values[role] = AutoTokenizer.from_pretrained(assets["teacher"])
        elif values.get(role) == "MODEL":
            values[role] = AutoModelForSequenceClassification.from_pretrained(assets["student"])
    with pytest.raises(InputError) as err:
        distil(**values)
    assert str(err.value).startswith(message), str(err.value)
    assert not os.path.exists(dump)
    if "label_column" in options:  # the command line's line for the same rows in a file
        capsys.readouterr()
        assert train_in_process(train_args(assets, dump, "--label_column", "sentiment")) == 2
        cli = capsys.readouterr().err.strip().removeprefix("error: ")
        assert cli.replace(f"'{assets['train']}'", "train_data= (as jsonl)") == str(err.value), cli


def test_an_interrupt_leaves_a_checkpoint_that_resume_true_continues(assets, tmp_path, monkeypatch, capsys):
    """Ctrl-C in a notebook is SIGINT: the run stops after the current step with a checkpoint and
    says how to continue; `resume=True` then ends at the unbroken run's weights."""
    from distillation.distiller import Distiller

    step, calls = Distiller._step, []

    def interrupted_at_step_2(self, group):
        values = step(self, group)
        calls.append(self.cfg.resume)
        if calls == [False, False]:
            signal.raise_signal(signal.SIGINT)
        return values

    monkeypatch.setattr(Distiller, "_step", interrupted_at_step_2)
    run = {"teacher": assets["teacher"], "student": assets["student"], "train_data": _rows(assets["train"]),
           "objective": "sequence_classification", "n_epoch": 1, "batch_size": 16, "learning_rate": 1e-3}
    # pathlib paths, as notebooks write them
    first = distil(**{**run, "teacher": pathlib.Path(assets["teacher"])}, dump_path=tmp_path / "run")
    assert first.summary["interrupted"] and first.summary["step"] == 2 and first.summary["final"] is None
    assert "distil(): interrupted after step 2: result.student is the student as it was given" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "run" / "checkpoint" / "complete.json")
    resumed = distil(**run, dump_path=str(tmp_path / "run"), resume=True)
    unbroken = distil(**run, dump_path=str(tmp_path / "unbroken"))
    assert resumed.summary["step"] == unbroken.summary["step"] == 6 and not resumed.summary["interrupted"]
    for key, value in unbroken.student.state_dict().items():
        assert torch.equal(resumed.student.state_dict()[key], value), key


def test_a_model_folder_without_tokenizer_files_is_refused(assets, tmp_path, capsys):
    """transformers builds a tokenizer of the special tokens alone from such a folder: every word
    would be unknown. The command line and distil() refuse it."""
    bare = tmp_path / "bare"
    AutoModelForSequenceClassification.from_pretrained(assets["student"]).save_pretrained(bare)
    capsys.readouterr()
    assert train_in_process(train_args(assets, tmp_path / "run", "--teacher_name", bare, "--student_name", bare)) == 2
    assert f"--teacher_name: '{bare}' has no tokenizer files (its tokenizer holds only its" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_model_folder_without_tokenizer_files_is_no_tokenizer_of_its_own(assets, tmp_path, capsys):
    """tokenizer= / --tokenizer_name says which tokenizer a run uses: a student saved without
    tokenizer files (an in-memory one is staged so) is not "a different vocabulary". A student
    folder with a tokenizer of other words still is."""
    from transformers import BertTokenizerFast

    tokenizer = str(tmp_path / "tokenizer")
    AutoTokenizer.from_pretrained(assets["teacher"]).save_pretrained(tokenizer)
    student = AutoModelForSequenceClassification.from_pretrained(assets["student"])
    quick = {"objective": "sequence_classification", "max_steps": 1, "batch_size": 16}
    distil(teacher=assets["teacher"], student=student, tokenizer=tokenizer, train_data=_rows(assets["train"]),
           dump_path=str(tmp_path / "api"), **quick)
    bare = tmp_path / "bare"
    student.save_pretrained(bare)
    assert train_in_process(train_args(assets, tmp_path / "cli", "--student_name", bare, "--tokenizer_name", tokenizer,
                                       "--max_steps", 1)) == 0
    (tmp_path / "words.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "other", "words"]) + "\n")
    BertTokenizerFast(vocab=str(tmp_path / "words.txt")).save_pretrained(bare)
    capsys.readouterr()
    assert train_in_process(train_args(assets, tmp_path / "other", "--student_name", bare, "--tokenizer_name", tokenizer)) == 2
    assert "--student_name has a different vocabulary from --tokenizer_name" in capsys.readouterr().err


def test_a_call_keeps_no_dataset_alive(assets, tmp_path, monkeypatch):
    """The token-id digests of the run's data (checkpoint fingerprint, cache check) are kept for as
    long as the dataset lives, not after the call."""
    import gc
    import weakref

    from distillation import checkpoint
    from distillation.data.identity import example_digests

    seen = []

    def spy(dataset):
        seen.append(weakref.ref(dataset))
        return example_digests(dataset)

    monkeypatch.setattr(checkpoint, "example_digests", spy)
    distil(teacher=assets["teacher"], student=assets["student"], train_data=_rows(assets["train"]), eval_data=_rows(assets["test"]),
           objective="sequence_classification", dump_path=str(tmp_path / "run"), max_steps=1, batch_size=16)
    gc.collect()
    assert seen and all(ref() is None for ref in seen)


def _process_state():
    import random

    import numpy as np
    import transformers

    np_state = np.random.get_state()
    return {"random": random.getstate(), "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
            "torch": torch.get_rng_state().tolist(), "torch_seed": torch.initial_seed(), "threads": torch.get_num_threads(),
            "environ": dict(os.environ), "verbosity": transformers.utils.logging.get_verbosity(),
            "bars": transformers.utils.logging.is_progress_bar_enabled()}


def test_a_call_leaves_the_callers_generators_as_they_were(assets, tmp_path):
    """The run seeds python's, numpy's and torch's generators (--seed 56 here): the caller's draws
    after the call are those it would have made without it."""
    torch.manual_seed(7)
    before = _process_state()
    distil(teacher=assets["teacher"], student=assets["student"], train_data=_rows(assets["train"]), seed=56,
           objective="sequence_classification", dump_path=str(tmp_path / "run"), max_steps=1, batch_size=16)
    assert _process_state() == before


def test_a_call_puts_back_threads_logging_and_environment_however_it_ends(assets, tmp_path, monkeypatch):
    import transformers

    from distillation import pipeline

    def meddling_run(cfg):
        torch.set_num_threads(torch.get_num_threads() + 1)
        os.environ["DISTIL_TEST_SET"] = "1"
        os.environ["DISTIL_TEST_CHANGED"] = "changed"
        os.environ.pop("DISTIL_TEST_REMOVED")
        transformers.utils.logging.set_verbosity_info()
        transformers.utils.logging.enable_progress_bar()
        torch.manual_seed(56)
        raise InputError("--data_file: stop here")

    monkeypatch.setattr(pipeline, "run", meddling_run)
    monkeypatch.setenv("DISTIL_TEST_CHANGED", "as given")
    monkeypatch.setenv("DISTIL_TEST_REMOVED", "as given")
    transformers.utils.logging.disable_progress_bar()
    before = _process_state()
    try:
        with pytest.raises(InputError, match="stop here"):
            distil(teacher=assets["teacher"], student=assets["student"], train_data=_rows(assets["train"]),
                   objective="sequence_classification", dump_path=str(tmp_path / "run"))
        assert _process_state() == before
    finally:
        transformers.utils.logging.enable_progress_bar()


@pytest.mark.parametrize("model", ["BertModel", "BertForMaskedLM"])
def test_a_student_the_run_cannot_train_in_place_is_refused_before_training(assets, tmp_path, model):
    """The student object gets final/'s weights: a bare encoder or another task's model cannot hold
    them (it used to train, write final/ and then fail in load_state_dict)."""
    import transformers

    from conftest import tiny_bert_config

    dump = tmp_path / "run"
    with pytest.raises(InputError) as err:
        distil(teacher=assets["teacher"], student=getattr(transformers, model)(tiny_bert_config()), tokenizer=assets["teacher"],
               train_data=_rows(assets["train"]), objective="sequence_classification", dump_path=str(dump))
    assert str(err.value).startswith(f"distil(): student= is a {model}, and a sequence_classification run trains a "
                                     "BertForSequenceClassification"), str(err.value)
    assert not dump.exists()


def test_the_run_folder_names_in_memory_inputs_not_their_deleted_copies(assets, tmp_path, monkeypatch, capsys):
    """parameters.json, final/README.md, adapter/adapter_config.json and the run's header say what
    was given (the staged copies are deleted when the call returns); an interrupted call resumes."""
    import datasets
    import tempfile

    from transformers import BertForSequenceClassification

    from conftest import tiny_bert_config
    from distillation.distiller import Distiller

    teacher = AutoModelForSequenceClassification.from_pretrained(assets["teacher"])
    tokenizer = AutoTokenizer.from_pretrained(assets["teacher"])
    student = BertForSequenceClassification(tiny_bert_config())
    step = Distiller._step

    def interrupted_at_step_1(self, group):
        values = step(self, group)
        if not self.cfg.resume:
            signal.raise_signal(signal.SIGINT)
        return values

    monkeypatch.setattr(Distiller, "_step", interrupted_at_step_1)
    run = {"teacher": teacher, "student": student, "tokenizer": tokenizer, "train_data": _rows(assets["train"]),
           "eval_data": datasets.Dataset.from_list(_rows(assets["test"])), "objective": "sequence_classification",
           "dump_path": str(tmp_path / "run"), "max_steps": 2, "batch_size": 16, "lora_r": 2}
    assert distil(**run).summary["interrupted"]
    assert distil(**run, resume=True).summary["step"] == 2
    given = {"teacher_name": f"<in-memory BertForSequenceClassification, loaded from {assets['teacher']!r}>",
             "student_name": "<in-memory BertForSequenceClassification>",
             "tokenizer_name": f"<in-memory {type(tokenizer).__name__}, loaded from {assets['teacher']!r}>",
             "data_file": "<in-memory list of 96 rows>", "eval_file": "<in-memory datasets.Dataset of 40 rows>"}
    parameters = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert {k: parameters[k] for k in given} == given
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert f"- teacher: {given['teacher_name']}, " in card and f"- student: {given['student_name']}, " in card
    assert f"- data: {given['data_file']}; evaluation: {given['eval_file']}" in card
    adapter = json.loads((tmp_path / "run" / "final" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == given["student_name"]
    staging = os.path.join(tempfile.gettempdir(), "distil-")
    out = capsys.readouterr().out
    assert f"teacher {given['teacher_name']} (" in out and f"data: 96 training examples ({given['data_file']})" in out
    assert staging not in json.dumps(parameters) + card + json.dumps(adapter) + out
