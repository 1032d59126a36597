"""Run a teacher once over a dataset and keep its outputs for --teacher_logits.

    python scripts/cache_teacher.py --teacher_name T --data_file train.txt --max_seq_length 512 \\
        --dump_path runs/teacher_cache [--method sampled --head 0 --k 31 | --method topk --k 12]
    torchrun --nproc_per_node=4 scripts/cache_teacher.py ...      # shards split over processes
    python scripts/cache_teacher.py --teacher_url http://127.0.0.1:8000 --tokenizer_name S \\
        --data_file train.txt --max_seq_length 512 --dump_path runs/teacher_cache --method topk --k 12
    python scripts/train.py --objective clm --teacher_logits runs/teacher_cache --student_name S \\
        --data_file train.txt --max_seq_length 512 --dump_path runs/student

Classification keeps each example's logits whole (`--objective sequence_classification`).
With --teacher_url (a vLLM server, as train.py's) the teacher's top-k comes from the server
(clm, --method topk only: a server returns no whole distribution to draw from): requests of
--batch_size sequences, 4 in flight; the values are at --temperature (at T != 1 the top k and
the rest tempered as k + 1 buckets, as a --teacher_url run trains on).
Rerunning the same command finishes an interrupted cache. distillation/offline_logits.py says
what is kept and how training reads it; the training run must use the same data file,
tokenizer, columns, --max_seq_length, --prompt_template and --temperature (checked, exit 2 otherwise).
"""

import argparse

from distillation.cache_pass import cache_pass
from distillation.cli import ArgumentParser, command, require_positive
from distillation.config import PRECISIONS, DistillConfig
from distillation.distributed import init_distributed, shutdown
from distillation.errors import InputError
from distillation.offline_logits import METHODS


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher_name", help="The teacher: hub name or folder.")
    teacher.add_argument("--teacher_url", help="The teacher on a vLLM server (its base URL, as train.py's --teacher_url): clm, "
                         "--method topk; give --tokenizer_name.")
    p.add_argument("--teacher_served_model", help="--teacher_url: the served model's name (default: the server's only model).")
    p.add_argument("--tokenizer_name", help="--teacher_url: the run's tokenizer (the student's), which must be the served "
                   "model's (checked).")
    p.add_argument("--teacher_timeout", type=float, default=DistillConfig.teacher_timeout,
                   help="--teacher_url: seconds one request may take before it is retried "
                   f"(default {DistillConfig.teacher_timeout:g}).")
    p.add_argument("--teacher_retries", type=int, default=DistillConfig.teacher_retries,
                   help="--teacher_url: retries of a failed request before the pass stops "
                   f"(default {DistillConfig.teacher_retries}).")
    p.add_argument("--data_file", required=True, help="Training data, as scripts/train.py reads it.")
    p.add_argument("--dump_path", required=True, help="The cache folder.")
    p.add_argument("--objective", default="clm", choices=("clm", "sequence_classification"))
    p.add_argument("--text_column", help="Classification: as the training run's (default: text).")
    p.add_argument("--text_pair_column", help="Classification: as the training run's.")
    p.add_argument("--label_column", help="Classification: as the training run's (default: label).")
    p.add_argument("--max_seq_length", type=int, help="As the training run's (default: 1024 or what the teacher accepts).")
    p.add_argument("--prompt_template", help="Instruction data: as the training run's.")
    p.add_argument("--temperature", type=float, default=DistillConfig.temperature,
                   help=f"T of the cached distributions = the training run's --temperature (default {DistillConfig.temperature:g}, train.py's).")
    p.add_argument("--method", choices=METHODS, help="clm: sampled (the head ids exact + k draws from the rest, the default) or "
                   "topk (k ids + log-probs + tail mass; the only one, and the default, with --teacher_url); classification: "
                   "full (its logits, the only choice).")
    p.add_argument("--head", type=int, help="sampled: the teacher's most likely ids kept exact before the draws (default: 4 at "
                   "--temperature 1 or below, where they hold half the mass, else 0; README says why).")
    p.add_argument("--k", type=int, help="Draws (sampled; default: what fills 64 bytes a position with the head, 31 - 2 x head, at "
                   "a vocabulary up to 65,536) or ids kept (topk; default 12) per position.")
    p.add_argument("--precision", choices=PRECISIONS, help="Autocast of the teacher's forward pass (default fp32; not with "
                   "--teacher_url).")
    p.add_argument("--teacher_dtype", choices=PRECISIONS, help="The dtype the teacher is loaded in (default: --precision's).")
    p.add_argument("--batch_size", type=int, default=8, help="Examples per teacher forward pass (per request with --teacher_url).")
    p.add_argument("--shard_size", type=int, default=1000, help="Examples per shard (the unit of resume and of rank split).")
    p.add_argument("--seed", type=int, default=56, help="Seed of the draws (sampled).")
    p.add_argument("--force", action="store_true", help="Replace an existing cache in --dump_path.")
    args = p.parse_args(argv)
    classification = args.objective == "sequence_classification"
    if args.teacher_url:
        _check_served(args, classification)
    for flag in ("tokenizer_name", "teacher_served_model"):
        if getattr(args, flag) and not args.teacher_url:
            raise InputError(f"--{flag}: only with --teacher_url (a --teacher_name teacher's tokenizer and name are its folder's)")
    args.method = args.method or ("full" if classification else "topk" if args.teacher_url else "sampled")
    args.precision = args.precision or "fp32"
    if args.head is None:  # the lower-variance split of 64 bytes at this temperature (docs/offline-logits.md)
        args.head = 4 if args.temperature <= 1 else 0
    if args.head < 0:
        raise InputError(f"--head {args.head}: must be 0 or more")
    if args.k is None:
        args.k = {"sampled": max(31 - 2 * args.head, 1), "topk": 12}.get(args.method)
    require_positive(args, "batch_size", "shard_size", *(["k"] if args.k is not None else []))
    if (args.method == "full") != classification:
        raise InputError(f"--method {args.method}: {args.objective} caches "
                         f"{'its logits whole (--method full)' if classification else 'topk or sampled'}")
    return args


def _check_served(args, classification: bool) -> None:
    """--teacher_url: what a server's top-k log-probabilities can cache."""
    if classification:
        raise InputError("--teacher_url: a served teacher returns next-token log-probabilities (clm); "
                         "--objective sequence_classification needs its logits whole: give --teacher_name")
    if args.method not in (None, "topk"):
        raise InputError(f"--method {args.method}: needs the teacher's whole distribution, and a served teacher (--teacher_url) "
                         "returns its top-k log-probabilities only: use --method topk, or --teacher_name")
    if not args.tokenizer_name:
        raise InputError("--teacher_url: give --tokenizer_name (the training run's tokenizer, the served model's; checked)")
    for flag in ("precision", "teacher_dtype"):
        if getattr(args, flag):
            raise InputError(f"--{flag}: the served teacher runs in the server's dtype; drop it with --teacher_url")


def _main(argv=None):
    args = parse_args(argv)
    teacher = {"teacher_url": args.teacher_url, "teacher_served_model": args.teacher_served_model,
               "tokenizer_name": args.tokenizer_name, "student_name": args.tokenizer_name,
               "teacher_timeout": args.teacher_timeout, "teacher_retries": args.teacher_retries} if args.teacher_url else \
        {"teacher_name": args.teacher_name, "student_name": args.teacher_name}
    values = {"objective": args.objective, **teacher,
              "data_file": args.data_file, "dump_path": args.dump_path, "temperature": args.temperature, "seed": args.seed,
              "max_seq_length": args.max_seq_length, "prompt_template": args.prompt_template, "text_column": args.text_column,
              "text_pair_column": args.text_pair_column, "label_column": args.label_column,
              "precision": args.precision, "teacher_dtype": args.teacher_dtype}
    cfg = DistillConfig.from_dict({k: v for k, v in values.items() if v is not None})
    env = init_distributed(cfg.ddp_timeout_minutes)
    manifest = cache_pass(cfg, env, args.method, args.k, args.head, args.shard_size, args.batch_size, args.force)
    if env.is_main:
        head = f" head={manifest['head']}" if manifest["head"] is not None else ""
        kept = f"{manifest['method']}{head} k={manifest['k']}, {manifest['bytes_per_row']} bytes a position" if manifest["k"] else \
            f"full logits, {manifest['bytes_per_row']} bytes an example"
        teacher = f"the teacher {manifest['teacher']}" if manifest.get("source") == "served" else \
            f"the teacher in {manifest['teacher_dtype']}, " + \
            ('no autocast' if manifest['precision'] == 'fp32' else manifest['precision'] + ' autocast')
        print(f"cache: {args.dump_path} ({manifest['n_examples']} examples, {kept}, T={manifest['temperature']:g}, "
              f"max_seq_length {manifest['max_seq_length']}; {teacher})")
    shutdown(env)


main = command(_main)
