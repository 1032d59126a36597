"""Initialise a DistilBERT from a BERT, as DistilBERT itself was: embeddings, teacher layers
0,2,4,7,9,11 as student layers 0-5, and the MLM head as the vocab projector.

    python scripts/extract_distilbert.py --teacher bert-base-uncased --dump_path students/distilbert

The output folder loads with `DistilBertForMaskedLM.from_pretrained` (the teacher's tokenizer is
saved beside it) and can be given to `train.py --student_name`. Bad input: one line on stderr,
exit code 2, nothing written.
"""

import argparse

from distillation.cli import ArgumentParser, command
from distillation.students import (
    bert_to_distilbert,
    check_dump_path,
    check_layers,
    load_teacher,
    load_teacher_config,
    parse_layers,
    save_student,
)


def _main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="Hub name or folder of a BERT (ideally with its MLM head).")
    parser.add_argument("--layers", help="Teacher layers to keep (default: 0,2,4,7,9,11 for a 12-layer BERT; "
                        "half of them, evenly spread, first and last kept, for others).")
    parser.add_argument("--vocab_transform", action=argparse.BooleanOptionalAction, default=True,
                        help="Copy the MLM head's transform (dense + LayerNorm) too (default: yes).")
    parser.add_argument("--dump_path", required=True, help="Folder to write the student to.")
    parser.add_argument("--force", action="store_true", help="Overwrite a non-empty --dump_path.")
    args = parser.parse_args(argv)

    check_dump_path(args.dump_path, args.force)
    config = load_teacher_config(args.teacher, model_types=("bert",))
    layers = check_layers(parse_layers(args.layers), config.num_hidden_layers) if args.layers else None
    teacher = load_teacher(args.teacher, config)
    student = bert_to_distilbert(teacher, layers, vocab_transform=args.vocab_transform)
    save_student(student, args.dump_path, args.teacher)
    n_params = student.num_parameters()
    print(f"DistilBERT with {student.config.n_layers} layers, {n_params:,} parameters -> {args.dump_path}")


main = command(_main)
