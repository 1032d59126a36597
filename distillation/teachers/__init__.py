"""Where the teacher's outputs come from: the kinds of teacher, behind one interface.

- local (local.py): the model inside every training process (whole, or sharded under fsdp);
  its logits may be kept per example after their first forward (--cache_teacher_logits).
- cached (cached.py, --teacher_logits DIR): a cache that scripts/cache_teacher.py wrote once;
  no model in training memory.
- served (served.py, --teacher_url URL): the teacher on its own inference server (vLLM), asked
  for its top-k log-probabilities at every position of each micro-batch.
- several (several.py, --teachers FILE): teachers of those kinds, routed per example or mixed.

The Distiller, evaluation and the cache pass call only this interface and never ask which kind
they hold:

    outputs(batch, with_hidden=False, split="train", logits=True)
        -> (logits [B, ..., C] or SparseTargets (`sparse`), hidden states or None);
           (None, None) where the kind has nothing (no teacher; a cache at evaluation)
    prepare(group, upcoming) before each optimizer step, with its micro-batches and the next
                            step's (None at the last): a kind that asks elsewhere sends its requests
                            here, so the student waits less; raises errors.TeacherUnavailable when it cannot
    end_epoch(env)          at every epoch end, on every rank (a collective where it shares)
    report(env) -> dict     for the run summary (a collective where it sums over ranks)
    parameters() -> int | None
    next_token_logprobs(sequence) -> [L - 1]   and   drawing(on_policy) -> draw context
                            --eval_generate (local and served only): the teacher's NLL of the
                            student's answers, and its own answers (on_policy.OnPolicy.drawing)
    members                 the teachers of several (each scored alone at evaluation), else ()
    model                   the module, where there is one in memory (hidden-state losses,
                            chunked losses, generation), else None
    identity                what the resume fingerprint compares
    description, warning    the run header's lines
    sparse                  outputs are SparseTargets (top-k or draws), not logits
"""

import torch

from distillation.models import model_identity
from distillation.teachers.cached import CachedTeacher, cached_teacher
from distillation.teachers.local import LocalTeacher
from distillation.teachers.served import ServedTeacher, served_teacher
from distillation.teachers.several import SeveralTeachers


def build_teacher(cfg, objective, tokenizer, model, strategy, train_dataset, eval_dataset, env):
    """The run's teacher: the --teacher_logits cache, the --teacher_url server, else the local
    `model` (None: no teacher) placed by `strategy`. `tokenizer`: the teacher's (the student's,
    unless it reads another)."""
    if cfg.teacher_logits:
        return cached_teacher(cfg, objective, tokenizer, train_dataset, env)
    if cfg.teacher_url:
        return served_teacher(cfg, objective, tokenizer, env)
    # A sharded teacher runs on every rank together: no rank may skip it on a cache hit.
    placed = strategy.teacher(model) if model is not None else None
    return LocalTeacher(placed, objective, env.device, len(train_dataset), len(eval_dataset or ()), cfg.cache_teacher_logits,
                        may_cache=not strategy.shards_teacher, identity=model_identity(placed) if model is not None else None)


def several_teachers(cfg, entries, members, objective, strategy, train_dataset, eval_dataset) -> SeveralTeachers:
    """The --teachers teachers, routed by the datasets' `routes` (--teacher_column) or mixed."""
    routes = None
    if cfg.teacher_column:
        routes = {split: torch.tensor(data.routes) for split, data in (("train", train_dataset), ("eval", eval_dataset)) if data is not None}
    return SeveralTeachers(entries, members, objective, routes, cfg.temperature, collective=strategy.shards_teacher,
                           column=cfg.teacher_column)


__all__ = ["CachedTeacher", "LocalTeacher", "ServedTeacher", "SeveralTeachers", "build_teacher", "several_teachers"]
