"""Initialise a student from some of a teacher's layers, keeping the teacher's class and head.

    python scripts/extract.py --teacher bert-base-uncased --layers 0,2,4,7,9,11 --dump_path students/bert6

Works for BERT, RoBERTa, DistilBERT, GPT-2 and Llama teachers (`distillation.students.SUPPORTED`);
the output folder loads with `from_pretrained` and can be given to `train.py --student_name`.
Bad input: one line on stderr, exit code 2, nothing written.
"""

import argparse

from distillation.cli import ArgumentParser, command
from distillation.students import (
    check_dump_path,
    check_layers,
    default_layers,
    extract_student,
    load_teacher,
    load_teacher_config,
    parse_layers,
    save_student,
)


def _main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="Hub name or folder of the teacher.")
    parser.add_argument("--layers", help="Teacher layers to keep, e.g. 0,2,4 (default: half of them, "
                        "evenly spread, first and last kept).")
    parser.add_argument("--dump_path", required=True, help="Folder to write the student to.")
    parser.add_argument("--force", action="store_true", help="Overwrite a non-empty --dump_path.")
    args = parser.parse_args(argv)

    check_dump_path(args.dump_path, args.force)
    config = load_teacher_config(args.teacher)
    n = config.num_hidden_layers
    layers = check_layers(parse_layers(args.layers), n) if args.layers else default_layers(n, max(n // 2, 1))
    teacher = load_teacher(args.teacher, config)
    student = extract_student(teacher, layers)
    save_student(student, args.dump_path, args.teacher)
    print(f"kept teacher layers {layers}: {student.num_parameters():,} parameters -> {args.dump_path}")


main = command(_main)
