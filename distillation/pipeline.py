"""From a config to a finished run: load, check everything, then (and only then) write.

`run(cfg)` is what scripts/train.py calls and what the demo calls in-process. Every check
that can fail on user input happens before the run folder is touched, so bad input leaves
nothing written and nothing overwritten.
"""

import os
import shutil

from transformers import set_seed

from distillation import checkpoint as ckpt
from distillation.data.subset import split_off
from distillation.distiller import Distiller
from distillation.distributed import barrier, init_distributed, shutdown
from distillation.errors import InputError
from distillation.lora import add_lora
from distillation.models import (
    check_pair, check_tokenizers, load_configs, load_student, load_teacher, load_tokenizer, load_tokenizers, sequence_limit,
    task_class,
)
from distillation.config_checks import check_cross
from distillation.objectives import OBJECTIVES, build_objective
from distillation.on_policy import check_data
from distillation.parallel import build_strategy
from distillation.teachers import build_teacher, several_teachers
from distillation.teachers.several import about, member_config, read_teachers


def run(cfg) -> dict:
    """Train as `cfg` says; returns the run summary (also written to summary.json)."""
    env = init_distributed(cfg.ddp_timeout_minutes, cfg.n_gpu)
    set_seed(cfg.seed)
    _check_dump_path(cfg)
    distiller, fresh = build(cfg, env)
    if cfg.resume:
        state = ckpt.load_checkpoint(cfg.dump_path, distiller.model, distiller.optimizer, distiller.fingerprint())
        distiller.load_trainer_state(state)
    elif env.is_main:
        _fresh_dump_path(cfg)
    barrier(env)
    distiller.open_log(fresh)
    summary = distiller.train()
    shutdown(env)  # every rank together: rank 0 may still be saving final/
    return summary


def build(cfg, env):
    """(the Distiller, the names of the student's weights initialised at random): everything
    loaded and checked, nothing written."""
    kind = OBJECTIVES[cfg.objective]
    if cfg.cache_teacher_logits and not kind.deterministic_inputs:
        raise InputError(f"--cache_teacher_logits: {kind.cache_refusal}")
    if cfg.save_best_metric and cfg.save_best_metric.removeprefix("eval_") not in kind.metrics:
        names = ", ".join(f"eval_{m}" for m in kind.metrics)
        raise InputError(f"--save_best_metric: {cfg.objective} has no metric '{cfg.save_best_metric}' (choose from {names})")
    # One config per teacher: the run's own, or each --teachers entry's as its single-teacher run.
    entries = read_teachers(cfg.teachers, routed=cfg.teacher_column is not None) if cfg.teachers else [None]
    members = [member_config(cfg, e) if e else cfg for e in entries]
    # The student's tokenizer, and the teacher's where it has another (objectives/clm_cross.py)
    tokenizer, teacher_tokenizer = (load_tokenizer(members[0]), None) if cfg.teachers else load_tokenizers(cfg)
    if teacher_tokenizer is not None:
        check_cross(cfg)
    configs = []
    for entry, member in zip(entries, members):
        with about(entry):
            configs.append(load_configs(member))
    student_config = configs[0][1]
    cfg.max_seq_length = min(sequence_limit(m, tokenizer, t, student_config) for m, (t, _) in zip(members, configs))
    objective = build_objective(cfg, tokenizer, configs[0][0], teacher_tokenizer)
    objective.routes = {e.route: i for i, e in enumerate(entries)} if cfg.teacher_column else None
    for entry, member, (teacher_config, _) in zip(entries, members, configs):
        member.max_seq_length = cfg.max_seq_length
        if member.teacher_name:
            with about(entry):
                task_class(objective, teacher_config, "--teacher_name")
    task_class(objective, student_config, "--student_name" if cfg.student_name else "--student_config")
    train_dataset = objective.load_dataset(cfg.data_file, "--data_file")
    check_data(cfg, train_dataset)
    if cfg.validation_split:
        train_dataset, eval_dataset = split_off(train_dataset, cfg.validation_split, cfg.seed)
    else:
        eval_dataset = objective.load_dataset(cfg.eval_file, "--eval_file") if cfg.eval_file else None
    strategy = build_strategy(cfg, env)
    teachers = []
    for entry, member, (teacher_config, _) in zip(entries, members, configs):
        with about(entry):
            check_tokenizers(member, tokenizer)
            teachers.append(load_teacher(member, objective, teacher_config, on_meta=strategy.loads_sharded("teacher")))
    student, fresh = load_student(cfg, objective, train_dataset, student_config, on_meta=strategy.loads_sharded("student"))
    if cfg.lora_r:
        add_lora(student, cfg, objective.lora_trains_head)
    sources = []
    for entry, member, teacher in zip(entries, members, teachers):
        with about(entry):
            check_pair(teacher, student, tokenizer, teacher_tokenizer)
            for data in (train_dataset, eval_dataset):
                if data is not None:
                    objective.check_models(teacher, student, data)
            sources.append(build_teacher(member, objective, teacher_tokenizer or tokenizer, teacher, strategy, train_dataset,
                                         eval_dataset, env))
    source = several_teachers(cfg, entries, sources, objective, strategy, train_dataset, eval_dataset) if cfg.teachers else sources[0]
    return Distiller(cfg, objective, student, source, tokenizer, train_dataset, eval_dataset, env, strategy), fresh


def _check_dump_path(cfg) -> None:
    exists = os.path.isdir(cfg.dump_path) and bool(os.listdir(cfg.dump_path))
    if cfg.resume:
        if ckpt.find_checkpoint(cfg.dump_path) is None:
            raise InputError(f"--resume: no complete checkpoint in '{ckpt.checkpoint_dir(cfg.dump_path)}'")
    elif exists and not cfg.force:
        raise InputError(f"--dump_path: '{cfg.dump_path}' already exists; add --force to overwrite it or --resume to continue it")
    elif os.path.exists(cfg.dump_path) and not os.path.isdir(cfg.dump_path):
        raise InputError(f"--dump_path: '{cfg.dump_path}' is a file")


def _fresh_dump_path(cfg) -> None:
    if os.path.isdir(cfg.dump_path):
        shutil.rmtree(cfg.dump_path)
    os.makedirs(cfg.dump_path)
    cfg.save(os.path.join(cfg.dump_path, "parameters.json"))
