"""Run a clm teacher once over a dataset and keep its distributions for --teacher_logits.

    python scripts/cache_teacher.py --teacher_name T --data_file train.txt --max_seq_length 512 \
        --dump_path runs/teacher_cache [--method topk --k 12 | --method sampled --k 12]
    torchrun --nproc_per_node=4 scripts/cache_teacher.py ...      # shards split over processes
    python scripts/train.py --objective clm --teacher_logits runs/teacher_cache --student_name S \
        --data_file train.txt --max_seq_length 512 --dump_path runs/student

Rerunning the same command finishes an interrupted cache. distillation/offline_logits.py says
what is kept and how training reads it; the training run must use the same data file,
tokenizer, --max_seq_length, --prompt_template and --temperature (checked, exit 2 otherwise).
"""

import argparse

from distillation.cli import ArgumentParser, command, require_positive
from distillation.config import DistillConfig
from distillation.distributed import init_distributed, shutdown
from distillation.offline_logits import METHODS, cache_pass


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_name", required=True, help="The clm teacher: hub name or folder.")
    p.add_argument("--data_file", required=True, help="Training data, as scripts/train.py reads it (text, binarized or instructions).")
    p.add_argument("--dump_path", required=True, help="The cache folder.")
    p.add_argument("--objective", default="clm", choices=("clm",), help="Only clm so far.")
    p.add_argument("--max_seq_length", type=int, help="As the training run's (default: 1024 or what the teacher accepts).")
    p.add_argument("--prompt_template", help="Instruction data: as the training run's.")
    p.add_argument("--temperature", type=float, default=2.0, help="T of the cached distributions = the training run's --temperature.")
    p.add_argument("--method", default="topk", choices=METHODS, help="topk: k ids + log-probs + tail mass; sampled: k draws.")
    p.add_argument("--k", type=int, default=12, help="Ids kept (topk) or draws (sampled) per position (default 12: 50 / 48 bytes).")
    p.add_argument("--batch_size", type=int, default=8, help="Examples per teacher forward pass.")
    p.add_argument("--shard_size", type=int, default=1000, help="Examples per shard (the unit of resume and of rank split).")
    p.add_argument("--seed", type=int, default=56, help="Seed of the draws (sampled).")
    p.add_argument("--force", action="store_true", help="Replace an existing cache in --dump_path.")
    args = p.parse_args(argv)
    require_positive(args, "k", "batch_size", "shard_size")
    return args


def _main(argv=None):
    args = parse_args(argv)
    values = {"objective": args.objective, "teacher_name": args.teacher_name, "student_name": args.teacher_name,
              "data_file": args.data_file, "dump_path": args.dump_path, "temperature": args.temperature, "seed": args.seed,
              "max_seq_length": args.max_seq_length, "prompt_template": args.prompt_template}
    cfg = DistillConfig.from_dict({k: v for k, v in values.items() if v is not None})
    env = init_distributed(cfg.ddp_timeout_minutes)
    manifest = cache_pass(cfg, env, args.method, args.k, args.shard_size, args.batch_size, args.force)
    if env.is_main:
        print(f"cache: {args.dump_path} ({manifest['n_examples']} examples, {manifest['method']} k={manifest['k']}, "
              f"{manifest['bytes_per_position']} bytes a position, T={manifest['temperature']:g}, "
              f"max_seq_length {manifest['max_seq_length']})")
    shutdown(env)


main = command(_main)
