"""The options' names and JSON types, checked for DistillConfig.from_dict: the values of a
`--config` file, of scripts/train.py's flags and of `distil(**options)` all pass here, so a
wrong name or type gets the same one-line InputError from each."""

import json
import typing
from dataclasses import fields

from distillation.errors import InputError

# Hugging Face Trainer habits: the flag people type, and ours.
TRAINER_NAMES = {
    "output_dir": "--dump_path", "num_train_epochs": "--n_epoch", "per_device_train_batch_size": "--batch_size",
    "per_device_eval_batch_size": "--eval_batch_size", "warmup_ratio": "--warmup_prop", "max_grad_norm": "--max_grad_norm",
    "logging_steps": "--log_interval (micro-batches)", "eval_steps": "--eval_interval (micro-batches)",
    "evaluation_strategy": "--eval_file (evaluated at each epoch end) and --eval_interval", "eval_strategy": "--eval_file and --eval_interval",
    "metric_for_best_model": "--save_best_metric", "load_best_model_at_end": "--save_best_metric (best/ is kept beside final/)",
    "bf16": "--precision bf16", "resume_from_checkpoint": "--resume", "dataloader_num_workers": "--num_workers",
    "model_name_or_path": "--student_name", "train_file": "--data_file", "validation_file": "--eval_file",
    "overwrite_output_dir": "--force", "alpha": "--alpha_ce and --alpha_task",
}


def unknown_option(name: str, source=None) -> InputError:
    """`name` is not an option (of a --config file `source`, or a flag); say which of ours a
    Trainer user most likely means."""
    name = name.lstrip("-").replace("-", "_")
    hint = f" (the Trainer's {name} is {TRAINER_NAMES[name]} here)" if name in TRAINER_NAMES else ""
    return InputError(f"{source}: unknown option '{name}'{hint}" if source else f"--{name}: unknown flag{hint}")


def check_types(cls, values: dict, source: str) -> None:
    """Refuse keys that are not options and values of the wrong JSON type (a string "false" for
    a flag would otherwise be true)."""
    known = {f.name: f for f in fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise unknown_option(key, source)
        f = known[key]
        kind, optional = base_type(f.type)
        ok = (value is None and optional) or (
            isinstance(value, bool) if kind is bool else
            isinstance(value, int) and not isinstance(value, bool) if kind is int else
            isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
            isinstance(value, str)
        )
        if not ok:
            raise InputError(f"{source}: '{key}' must be {_TYPE_NAMES[kind]}{' or null' if optional else ''} (got {json.dumps(value, default=repr)})")
        if "choices" in f.metadata and value is not None and value not in f.metadata["choices"]:
            raise InputError(f"{source}: '{key}' must be one of {', '.join(f.metadata['choices'])} (got {json.dumps(value, default=repr)})")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def base_type(annotation):
    """(int|float|str|bool, optional?) of a field's annotation."""
    args = typing.get_args(annotation)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False
