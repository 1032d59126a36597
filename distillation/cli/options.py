"""scripts/train.py's options: the parser built from DistillConfig's fields, `--help` with every
real default, and the `--config` JSON file checked against the same fields and types.

The command line and the JSON file take the same names. What was not given stays None, so
that DistillConfig.resolve() can tell a default from a choice.
"""

import argparse
import json
import typing
from dataclasses import fields

from distillation.cli import ArgumentParser
from distillation.errors import InputError
from distillation.reporting import show

SECTIONS = {
    "run": "run", "data": "data", "models": "models", "losses": "losses (loss = alpha_ce·KL + alpha_task·task + alpha_mse·logit MSE "
    "+ alpha_hidden_mse·hidden MSE + alpha_cos·hidden cosine)", "mlm": "masked language modelling",
    "optimisation": "optimisation", "reporting": "reporting, evaluation, saving, processes",
}
USAGE = """python scripts/train.py [--config FILE.json] [--flag value ...]

Distil a teacher into a student (or, without --teacher_name, train it on the labels). The flags of
the reference distiller keep their meaning (README, "Reference flags"); defaults that differ by
objective are listed as such. Bad input: one line on stderr, exit code 2, nothing written."""


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


def parse_train_args(argv=None):
    """(values, source): the `--config` file's values with the given flags on top."""
    from distillation.config import DistillConfig, read_json_object

    args = build_parser(DistillConfig).parse_args(argv)
    values, source = {}, "arguments"
    if args.config:
        values = read_json_object(args.config, "--config")
        source = f"--config {args.config}"
        check_types(DistillConfig, values, source)
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    return values, source


def check_types(cls, values: dict, source: str) -> None:
    """Refuse keys that are not options and values of the wrong JSON type (a string "false" for
    a flag would otherwise be true)."""
    known = {f.name: f for f in fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise unknown_option(key, source)
        f = known[key]
        kind, optional = _base_type(f.type)
        ok = (value is None and optional) or (
            isinstance(value, bool) if kind is bool else
            isinstance(value, int) and not isinstance(value, bool) if kind is int else
            isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
            isinstance(value, str)
        )
        if not ok:
            raise InputError(f"{source}: '{key}' must be {_TYPE_NAMES[kind]}{' or null' if optional else ''} (got {json.dumps(value)})")
        if "choices" in f.metadata and value is not None and value not in f.metadata["choices"]:
            raise InputError(f"{source}: '{key}' must be one of {', '.join(f.metadata['choices'])} (got {json.dumps(value)})")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _base_type(annotation):
    """(int|float|str|bool, optional?) of a field's annotation."""
    args = typing.get_args(annotation)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def default_text(f) -> str:
    """What --help prints as a field's default."""
    from distillation.config import OBJECTIVE_DEFAULTS, OBJECTIVE_NAMES

    if "shown" in f.metadata:
        return f.metadata["shown"]
    if f.name in OBJECTIVE_DEFAULTS:
        values = OBJECTIVE_DEFAULTS[f.name]
        text = show(values[0]) if len(set(values)) == 1 else ", ".join(f"{show(v)} for {n}" for n, v in zip(OBJECTIVE_NAMES, values))
        return text + (f"; {f.metadata['also']}" if "also" in f.metadata else "")
    return show(f.default)


class _GroupBySize(argparse.Action):
    """`--group_by_size {true,false}` and `--no-group_by_size`; the bare flag is refused because
    the reference's bare `--group_by_size` (store_false) turned grouping off."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs="?", metavar="{true,false}", **kw)

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string.startswith("--no-"):
            setattr(namespace, self.dest, False)
        elif value is None:
            raise InputError(
                "--group_by_size: in the reference this bare flag turned length grouping OFF; here grouping is on by "
                "default: write --no-group_by_size to turn it off (or --group_by_size true)"
            )
        elif value.lower() in ("true", "false"):
            setattr(namespace, self.dest, value.lower() == "true")
        else:
            raise InputError(f"--group_by_size: expected true or false (got '{value}')")


class _TrainParser(ArgumentParser):
    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            raise unknown_option(message.split(": ", 1)[1].split()[0])
        super().error(message)


def build_parser(cls) -> argparse.ArgumentParser:
    parser = _TrainParser(usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON file of options (the same names as the flags); flags given here override it.")
    groups = {key: parser.add_argument_group(title) for key, title in SECTIONS.items()}
    for f in fields(cls):
        help_text = f"{f.metadata['help']} (default: {default_text(f)})".replace("%", "%%")
        kind, _ = _base_type(f.type)
        names = [f"--{f.name}"] + (["--local-rank"] if f.name == "local_rank" else [])
        kw = {"help": help_text, "default": None, "dest": f.name}
        if f.name == "group_by_size":
            names.append("--no-group_by_size")
            kw["action"] = _GroupBySize
        elif kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = kind
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        groups[f.metadata["section"]].add_argument(*names, **kw)
    return parser
