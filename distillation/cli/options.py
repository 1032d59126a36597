"""scripts/train.py's options: the parser built from DistillConfig's fields, `--help` with every
real default, and the `--config` JSON file read under them (DistillConfig checks the names and
types of both: distillation/config_types.py).

The command line and the JSON file take the same names. What was not given stays None, so
that DistillConfig.resolve() can tell a default from a choice.
"""

import argparse
from dataclasses import fields

from distillation.cli import ArgumentParser
from distillation.config import OBJECTIVE_DEFAULTS, OBJECTIVE_NAMES, DistillConfig, read_json_object
from distillation.config_types import base_type, check_types, unknown_option
from distillation.errors import InputError
from distillation.reporting import show

SECTIONS = {
    "run": "run", "data": "data", "models": "models", "losses": "losses (loss = alpha_ce·KL + alpha_task·task + alpha_mse·logit MSE "
    "+ alpha_hidden_mse·hidden MSE + alpha_cos·hidden cosine)", "mlm": "masked language modelling",
    "optimisation": "optimisation", "reporting": "reporting, evaluation, saving, processes",
}
USAGE = """python scripts/train.py [--config FILE.json] [--flag value ...]

Distil a teacher into a student (or, without --teacher_name, train it on the labels). The flags of
the reference distiller keep their meaning (docs/reference-flags.md); defaults that differ by
objective are listed as such. Bad input: one line on stderr, exit code 2, nothing written."""


def config_from_cli(argv=None) -> DistillConfig:
    """`argv`: `--config FILE.json` first, then flags on top, checked and resolved as
    DistillConfig.from_dict does. Raises InputError."""
    args = build_parser(DistillConfig).parse_args(argv)
    values, source = {}, "arguments"
    if args.config:
        values = read_json_object(args.config, "--config")
        source = f"--config {args.config}"
        check_types(DistillConfig, values, source)
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    return DistillConfig.from_dict(values, source)


def default_text(f) -> str:
    """What --help prints as a field's default."""
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
        kind, _ = base_type(f.type)
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
