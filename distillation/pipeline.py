"""From a config to a finished run: load, check everything, then (and only then) write.

`run(cfg)` is what scripts/train.py calls and what the demo calls in-process. Every check
that can fail on user input happens before the run folder is touched, so bad input leaves
nothing written and nothing overwritten.
"""

import os
import shutil

from transformers import set_seed

from distillation import checkpoint as ckpt
from distillation.distiller import Distiller
from distillation.distributed import barrier, init_distributed, shutdown
from distillation.errors import InputError
from distillation.models import check_pair, check_tokenizers, load_student, load_teacher, load_tokenizer
from distillation.objectives import build_objective


def run(cfg) -> dict:
    """Train as `cfg` says; returns the run summary (also written to summary.json)."""
    env = init_distributed(cfg.ddp_timeout_minutes)
    set_seed(cfg.seed)
    _check_dump_path(cfg)
    tokenizer = load_tokenizer(cfg)
    objective = build_objective(cfg, tokenizer)
    if cfg.cache_teacher_logits and not objective.deterministic_inputs:
        raise InputError(f"--cache_teacher_logits: {objective.cache_refusal}")
    train_dataset = objective.load_dataset(cfg.data_file, "--data_file")
    eval_dataset = objective.load_dataset(cfg.eval_file, "--eval_file") if cfg.eval_file else None
    check_tokenizers(cfg, tokenizer)
    teacher = load_teacher(cfg, objective)
    student = load_student(cfg, objective, train_dataset)
    check_pair(teacher, student, tokenizer)
    objective.check_models(teacher, student, train_dataset)
    if eval_dataset is not None:
        objective.check_models(teacher, student, eval_dataset)

    distiller = Distiller(cfg, objective, student, teacher, tokenizer, train_dataset, eval_dataset, env)
    if cfg.resume:
        distiller.load_state_dict(ckpt.load_checkpoint(cfg.dump_path, ckpt.fingerprint(objective.name, distiller.model)))
    elif env.is_main:
        _fresh_dump_path(cfg)
    barrier(env)
    distiller.open_log()
    summary = distiller.train()
    barrier(env)  # rank 0 may still be saving final/: leave the group together
    shutdown(env)
    return summary


def _check_dump_path(cfg) -> None:
    exists = os.path.isdir(cfg.dump_path) and bool(os.listdir(cfg.dump_path))
    if cfg.resume:
        if not os.path.isfile(ckpt.checkpoint_file(cfg.dump_path)):
            raise InputError(f"--resume: no checkpoint at '{ckpt.checkpoint_file(cfg.dump_path)}'")
    elif exists and not cfg.force:
        raise InputError(f"--dump_path: '{cfg.dump_path}' already exists; add --force to overwrite it or --resume to continue it")
    elif os.path.exists(cfg.dump_path) and not os.path.isdir(cfg.dump_path):
        raise InputError(f"--dump_path: '{cfg.dump_path}' is a file")


def _fresh_dump_path(cfg) -> None:
    if os.path.isdir(cfg.dump_path):
        shutil.rmtree(cfg.dump_path)
    os.makedirs(cfg.dump_path)
    cfg.save(os.path.join(cfg.dump_path, "parameters.json"))
