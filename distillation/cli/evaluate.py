"""Teacher-vs-student report of saved classifiers, the same figures as scripts/demo.py's.

    python scripts/evaluate.py --model runs/demo/distil/final --teacher runs/demo/teacher/final \\
        --eval_file runs/demo/data/test.jsonl

Prints accuracy, macro-F1, layers, parameters and per-example CPU latency of --model (and of
--teacher, with their agreement, the accuracy kept and the speed-up); --json writes them.
distillation/tools/report.py says how each figure is made.
"""

import argparse
import json

from distillation.cli import ArgumentParser, command, require_positive
from distillation.tools.report import (
    EVAL_BATCH_SIZE,
    LATENCY_EXAMPLES,
    MAX_SEQ_LENGTH,
    build_report,
    format_report,
)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Saved sequence classifier (e.g. a run's final/ folder) with its tokenizer.")
    p.add_argument("--teacher", help="Saved teacher classifier to compare with.")
    p.add_argument("--eval_file", required=True, help="Labelled data: jsonl/json/csv/tsv.")
    p.add_argument("--text_column", default="text")
    p.add_argument("--text_pair_column")
    p.add_argument("--label_column", default="label")
    p.add_argument("--max_seq_length", type=int, default=MAX_SEQ_LENGTH, help="Longer inputs are truncated (default: the demo's).")
    p.add_argument("--batch_size", type=int, default=EVAL_BATCH_SIZE, help="Evaluation batch size (default: the demo's).")
    p.add_argument("--latency_examples", type=int, default=LATENCY_EXAMPLES, help="Examples timed one by one for latency.")
    p.add_argument("--json", help="Also write the report here as JSON.")
    args = p.parse_args(argv)
    require_positive(args, "max_seq_length", "batch_size", "latency_examples")
    return args


def _main(argv=None):
    args = parse_args(argv)
    report = build_report(
        args.model, args.eval_file, args.teacher, args.text_column, args.label_column, args.text_pair_column,
        args.max_seq_length, args.batch_size, args.latency_examples,
    )
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


main = command(_main)
