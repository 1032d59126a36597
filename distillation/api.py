"""`distil(...)`: the run scripts/train.py makes, from Python, over models and data in memory too.

    from distillation import distil
    result = distil(teacher=fine_tuned, student=half_depth, train_data=rows, eval_data=held_out,
                    objective="sequence_classification", tokenizer=tokenizer, dump_path="runs/nb", n_epoch=3)
    result.summary["eval_accuracy"], result.student, result.tokenizer

- `teacher` / `student`: a hub name, a folder, or a `PreTrainedModel` (the student object is
  trained: its weights are the run's `final/` ones when `distil` returns). `teacher=None`
  trains the student on the labels alone, as a run without --teacher_name does.
- `train_data` / `eval_data`: a path (as --data_file / --eval_file), a `datasets.Dataset` or a
  list of dicts; the column options (--text_column, --label_column...) read them as from a file.
- `options`: scripts/train.py's flags, by the same names, with the same defaults and checks: a
  wrong name, type or value raises InputError with the message the command line prints.

In-memory models, tokenizer and data are written to a temporary folder (save_pretrained, jsonl)
and the run reads them from there, so a run from Python and one from the command line are the
same run: the same checks, checkpoints, resume fingerprint and folders. The temporary folder is
removed when `distil` returns: parameters.json, the model cards and adapter_config.json name
such an input by what it was ("<in-memory list of 96 rows>", see `_described`), not by its copy.
Nothing is left behind in the process between calls (no process group, no signal handler, no
dataset), and its state is as the caller left it (random generators, torch threads,
transformers' logging, environment variables). Ctrl-C (a notebook's interrupt) stops at the end
of the current step with a checkpoint: call `distil` again with `resume=True` to continue.
"""

import contextlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import transformers

from distillation.config import DistillConfig
from distillation.errors import InputError

SOURCE = "distil()"  # how errors name the options given here
ROLES = {"teacher": "teacher_name", "student": "student_name", "train_data": "data_file", "eval_data": "eval_file",
         "tokenizer": "tokenizer_name"}


@dataclass
class DistilResult:
    summary: dict  # summary.json: metrics of the last evaluation, best/ and final/ folders, time, speed
    student: Any  # the trained student (the object given, trained in place, or the one loaded from final/)
    tokenizer: Any


def distil(teacher=None, student=None, train_data=None, eval_data=None, objective: Optional[str] = None, tokenizer=None,
           **options) -> DistilResult:
    """Distil `teacher` into `student` on `train_data` (see the module docstring); returns the
    run's summary, the trained student and the tokenizer. Raises InputError on bad input, with
    nothing written."""
    given = {flag: options[flag] for flag in ROLES.values() if flag in options}
    if given:
        role = next(r for r, f in ROLES.items() if f in given)
        raise InputError(f"{SOURCE}: give {role}= rather than {next(iter(given))}=")
    teacher, student, tokenizer, train_data, eval_data = map(_path, (teacher, student, tokenizer, train_data, eval_data))
    in_memory = [role for role, model in (("teacher", teacher), ("student", student)) if _in_memory(model)]
    for role, model in (("teacher", teacher), ("student", student)):
        if role in in_memory and not isinstance(model, transformers.PreTrainedModel):
            raise InputError(f"{SOURCE}: {role}= must be a name, a folder or a transformers PreTrainedModel (got {type(model).__name__})")
    if in_memory and tokenizer is None:
        raise InputError(f"{SOURCE}: give tokenizer= with an in-memory {in_memory[0]} (it is saved beside the model for the run)")
    options = {k: _path(v) for k, v in options.items()}
    with tempfile.TemporaryDirectory(prefix="distil-") as staging, _callers_process():
        tok = _save(tokenizer, os.path.join(staging, "tokenizer")) if _in_memory(tokenizer) else tokenizer
        values = {"objective": objective, "teacher_name": _model(teacher, "teacher", staging, tokenizer),
                  "student_name": _model(student, "student", staging, tokenizer), "tokenizer_name": tok,
                  "data_file": _data(train_data, "train_data", staging), "eval_file": _data(eval_data, "eval_data", staging),
                  **options}
        try:
            cfg = DistillConfig.from_dict({k: v for k, v in values.items() if v is not None}, SOURCE)
            if _in_memory(student):
                _check_trainable_in_place(student, cfg.objective)
            inputs = {"teacher": teacher, "student": student, "tokenizer": tokenizer, "train_data": train_data, "eval_data": eval_data}
            cfg.given_as = {ROLES[role]: _described(value) for role, value in inputs.items() if _in_memory(value)}
            from distillation.pipeline import run  # imports torch.distributed and the models: only once the options are known good

            summary = run(cfg)
        except InputError as err:  # the staged copies are gone when the caller reads this: name what they hold
            raise InputError(_staged_names(str(err), staging)) from None
        trained, loaded_tokenizer = _trained_student(cfg, summary, student)
    if summary.get("interrupted"):
        print(f"{SOURCE}: interrupted after step {summary['step']}: result.student is the student as it was given; the "
              f"trained weights are in {os.path.join(cfg.dump_path, 'checkpoint')}, which the same call with resume=True continues")
    return DistilResult(summary, trained, tokenizer if _in_memory(tokenizer) else loaded_tokenizer)


@contextlib.contextmanager
def _callers_process():
    """The caller's process back as it was, however the run ends: the run seeds the global
    generators (python, numpy, torch, CUDA) as the command line does, and a notebook's own draws
    after the call must not depend on it; torch's threads and the environment are put back too.
    While it runs, transformers' loading bars and warnings are off (the run's own bar and lines
    only, as on the command line)."""
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    rngs = random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None
    threads, environ = torch.get_num_threads(), dict(os.environ)
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        (logging.enable_progress_bar if bars else logging.disable_progress_bar)()
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)
        torch.set_num_threads(threads)
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.set_rng_state(rngs[2])
        if cuda:
            torch.cuda.set_rng_state_all(rngs[3])


def _check_trainable_in_place(student, objective: str) -> None:
    """The object given gets final/'s weights: it must be of the class the run trains, which a
    bare encoder (BertModel) or another task's model is not."""
    from distillation.models import task_class
    from distillation.objectives import OBJECTIVES

    wanted = task_class(OBJECTIVES[objective], student.config, f"{SOURCE}: student=")
    if not isinstance(student, wanted):
        raise InputError(f"{SOURCE}: student= is a {type(student).__name__}, and a {objective} run trains a {wanted.__name__} "
                         f"(its {OBJECTIVES[objective].auto_model_class.__name__.removeprefix('AutoModelFor')} head too): give "
                         f"one (e.g. {wanted.__name__}.from_pretrained(<folder>)), or the folder itself")


def _described(value) -> str:
    """What the run's files say an in-memory input was, in place of its staged copy:
    "<in-memory BertForSequenceClassification, loaded from 'models/teacher'>" (a model or tokenizer
    that `from_pretrained` loaded, since changed or not), "<in-memory list of 96 rows>"."""
    if isinstance(value, list) or hasattr(value, "to_list"):
        return f"<in-memory {'datasets.Dataset' if hasattr(value, 'to_list') else 'list'} of {len(value)} rows>"
    origin = getattr(value, "name_or_path", "")
    return f"<in-memory {type(value).__name__}{f', loaded from {origin!r}' if origin else ''}>"


def _staged_names(message: str, staging: str) -> str:
    """`message` with the temporary copies named by what the caller passed: "train_data= (as jsonl)"."""
    for role in ("train_data", "eval_data", "teacher", "student", "tokenizer"):
        message = message.replace(f"'{os.path.join(staging, role + '.jsonl')}'", f"{role}= (as jsonl)")
        message = message.replace(f"'{os.path.join(staging, role)}'", f"{role}= (saved)")
    return message


def _model(model, role: str, staging: str, tokenizer) -> Optional[str]:
    """A name or folder as given; an in-memory model saved (with the tokenizer) and its folder."""
    if not _in_memory(model):
        return model
    folder = _save(model, os.path.join(staging, role))
    if _in_memory(tokenizer):
        tokenizer.save_pretrained(folder)
    return folder


def _path(value):
    """A pathlib path as the str the options take; anything else as it is."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _in_memory(value) -> bool:
    """A Python object to stage (a model, tokenizer or dataset) rather than a name or path."""
    return value is not None and not isinstance(value, str)


def _save(obj, folder: str) -> str:
    obj.save_pretrained(folder)
    return folder


def _data(data, role: str, staging: str) -> Optional[str]:
    """A path as given; a datasets.Dataset or a list of dicts written as jsonl, and its path."""
    if not _in_memory(data):
        return data
    rows = data.to_list() if hasattr(data, "to_list") else data
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError(f"{SOURCE}: {role}= must be a path, a datasets.Dataset or a list of dicts (got {type(data).__name__})")
    path = os.path.join(staging, f"{role}.jsonl")
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            try:
                f.write(json.dumps(row) + "\n")
            except TypeError as err:
                raise InputError(f"{SOURCE}: {role}= row {i + 1} (line {i + 1} as jsonl): {err}") from None
    return path


def _trained_student(cfg, summary, student):
    """(the student with final/'s weights, final/'s tokenizer); the student as it was when the run
    stopped before final/ (interrupted: its checkpoint resumes it)."""
    from transformers import AutoTokenizer

    from distillation.objectives import OBJECTIVES

    if not summary.get("final"):
        return student, None
    trained = OBJECTIVES[cfg.objective].auto_model_class.from_pretrained(summary["final"])
    tokenizer = AutoTokenizer.from_pretrained(summary["final"])
    if student is None or isinstance(student, str):
        return trained, tokenizer
    student.load_state_dict(trained.state_dict())  # in place: the caller's object is the trained student
    student.config.id2label, student.config.label2id = trained.config.id2label, trained.config.label2id  # the data's label names
    return student, tokenizer

