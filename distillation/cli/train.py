"""Distil a teacher into a student: `python scripts/train.py [--config FILE.json] [--flag value ...]`.

Multi-GPU: `torchrun --nproc_per_node=8 scripts/train.py ...` (same flags). Every option is
described by `--help`; DESIGN §5 is the contract. Bad input: one line on stderr, exit code 2.
"""


from distillation.cli import command
from distillation.cli.options import config_from_cli
from distillation.pipeline import run


def _main(argv=None):
    summary = run(config_from_cli(argv))
    if summary.get("interrupted"):
        return 130


main = command(_main)
