"""One student distilled from each of several teachers alone against the same student distilled
from their mixture (--teachers).

    python scripts/benchmark_teachers.py --out runs/teachers_ensemble           # teachers seeds 1 2 3, students 5 6 7
    python scripts/benchmark_teachers.py --out runs/teachers_quick --quick      # tiny BERTs and texts, seconds
    python scripts/benchmark_teachers.py --mode routing --out runs/teachers_routing   # two clm domain teachers, routed

Three MiniLM teachers fine-tuned on the demo's tweets as the demo fine-tunes its one (different
seeds), one 3-layer student init (the base MiniLM's layers 0,3,5), and for every student seed a
run from each teacher alone and one from their equal mix, at the classification defaults. Prints
test accuracy, macro-F1 and agreement with the ensemble (argmax of the teachers' mean
probability) per seed and on average, each run's wall time, and each teacher's and the
ensemble's own accuracy; every finished teacher and run is kept in OUT/results.json, so rerunning
the command finishes an interrupted benchmark.

--mode routing (clm): two domain teachers fine-tuned from SmolLM2-135M-Instruct (plain training,
no teacher), one on Shakespeare, one on Python source of the standard library, and the
half-depth student (first healed: --heal_epochs of plain training on both domains' records)
distilled on both domains' text records routed by domain, from each teacher alone and from their
mix; held-out perplexity per domain. The models and Shakespeare files are
scripts/benchmark_offline.py's (--base, --student, --shakespeare_*).
distillation/tools/teachers_benchmark.py (ensemble) and routing_benchmark.py (routing) say what runs.
"""

import argparse
import os
import shlex

from distillation.cli import ArgumentParser, command, require_positive
from distillation.tools.demo import DEFAULT_CACHE, settings_for
from distillation.tools.routing_benchmark import format_routing_table, quick_routing_assets, routing_assets, routing_benchmark
from distillation.tools.teachers_benchmark import QUICK, benchmark, ensemble_assets, format_table, quick_ensemble_assets

BENCH = os.path.join("runs", "served_bench")  # scripts/benchmark_offline.py --out runs/served_bench wrote these
HEAL_EPOCHS, HEAL_RECORDS, HEAL_LR = 2, 600, 1e-3


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Folder for the data split, teachers, runs and results.json.")
    p.add_argument("--mode", choices=["ensemble", "routing"], default="ensemble",
                   help="ensemble: MiniLM classifiers mixed; routing: clm domain teachers routed by a data column.")
    p.add_argument("--quick", action="store_true", help="Tiny models and a few dozen texts built here (seconds, nothing fetched).")
    p.add_argument("--teacher_seeds", type=int, nargs="+", default=[1, 2, 3],
                   help="One teacher fine-tuned per seed (at least two); the mix is all of them, equally weighted.")
    p.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7], 
                   help="Student seeds: each seeds one run per teacher and one from the mix.")
    routing = p.add_argument_group("routing mode")
    routing.add_argument("--base", default=os.path.join(BENCH, "smollm2-135m-instruct"),
                         help="The model both domain teachers are fine-tuned from.")
    routing.add_argument("--student", default=os.path.join(BENCH, "smollm2-135m-half"), help="The student's init.")
    routing.add_argument("--shakespeare_train", default=os.path.join(BENCH, "train.txt"), help="Shakespeare lines to train on.")
    routing.add_argument("--shakespeare_eval", default=os.path.join(BENCH, "eval.txt"), help="Held-out Shakespeare lines.")
    routing.add_argument("--records", type=int, default=120, help="Training text records per domain.")
    routing.add_argument("--eval_records", type=int, default=40, help="Held-out text records per domain.")
    routing.add_argument("--record_lines", type=int, default=4, help="Consecutive lines a record.")
    routing.add_argument("--max_seq_length", type=int, default=64, help="Tokens a record at most.")
    routing.add_argument("--batch_size", type=int, default=8)
    routing.add_argument("--teacher_epochs", type=int, default=2, help="Epochs of each domain teacher's fine-tune.")
    routing.add_argument("--teacher_lr", type=float, default=1e-4, help="Learning rate of the domain teachers' fine-tune.")
    routing.add_argument("--teacher_seed", type=int, default=1, help="Seed of both domain teachers' fine-tune.")
    routing.add_argument("--heal_epochs", type=int, default=HEAL_EPOCHS,
                         help="Epochs of the student init's plain fine-tune (no teacher) on both domains' records before any "
                              "distillation; every run starts from it (0: the raw half-depth cut).")
    routing.add_argument("--heal_records", type=int, default=HEAL_RECORDS,
                         help="Training text records per domain of the student init's fine-tune (the first ones: those "
                              "distilled on and more).")
    routing.add_argument("--heal_lr", type=float, default=HEAL_LR, help="Learning rate of the student init's fine-tune.")
    routing.add_argument("--learning_rate", type=float, default=2e-4, help="The student's learning rate (one epoch).")
    p.add_argument("--extra", default="", help="More train.py flags for every distillation run, e.g. --extra='--temperature 1'.")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS of each run.")
    p.add_argument("--cache_dir", default=DEFAULT_CACHE, help="Where the fetched assets are kept (the demo's cache).")
    args = p.parse_args(argv)
    require_positive(args, "threads", "records", "eval_records", "record_lines", "max_seq_length", "batch_size", "teacher_epochs",
                     "heal_records")
    if args.heal_epochs < 0:
        p.error(f"--heal_epochs must be >= 0 (got {args.heal_epochs})")
    if len(set(args.teacher_seeds)) < 2:
        p.error("--teacher_seeds: give at least two different seeds (a mix of one teacher is that teacher)")
    args.extra = shlex.split(args.extra)
    if args.quick:  # the tiny grammar's records: a few dozen per domain, short
        args.records, args.eval_records = min(args.records, 48), min(args.eval_records, 16)
        args.heal_records = min(args.heal_records, args.records)
        args.max_seq_length = min(args.max_seq_length, 32)
    return args


def _main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.mode == "routing":
        assets = quick_routing_assets(args.out, args) if args.quick else routing_assets(
            args.out, args.base, args.student, args.shakespeare_train, args.shakespeare_eval, args)
        print(format_routing_table(args, routing_benchmark(args, assets)))
        return
    if args.quick:
        settings = settings_for(False, **{k: v for k, v in QUICK.items()}, precision="fp32")
        assets = quick_ensemble_assets(args.out, settings)
    else:
        settings = settings_for(False)  # the demo's sizes, split seed (42), epochs and learning rates
        assets = ensemble_assets(args.out, args.cache_dir, settings)
    print(format_table(args, benchmark(args, settings, assets)))


main = command(_main)
