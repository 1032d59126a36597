"""Evaluation of the student (and the teacher) on the held-out set, sharded over processes.

Batches are the examples sorted by length (little padding), dealt round-robin to the ranks:
every example is scored by exactly one process, and the per-example statistics of all ranks
are gathered before the objective turns them into metrics, so 1 and N processes report the
same numbers. Random inputs (MLM's masks) come from a generator seeded by the batch's place in
that global order, so every evaluation, at any number of processes, scores the same inputs.
"""

import torch
from torch.utils.data import DataLoader

from distillation.distributed import all_gather_objects, item_seed
from distillation.objectives.lm import HeadRows


@torch.no_grad()
def evaluate(model, teacher, objective, dataset, batch_size: int, env, autocast, seed: int) -> dict:
    """`eval_*` metrics of `model` (a StudentWithProjection) and of `teacher` (teachers/: its logits, or nothing at evaluation)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(dataset)), key=dataset.lengths.__getitem__)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mine = batches[env.rank :: env.world_size]  # disjoint shards: nothing counted twice
    # Every rank runs as many forward passes (a sharded model's are collectives): the short ones
    # repeat their first batch and drop its statistics.
    padding = -(-len(batches) // env.world_size) - len(mine)
    numbers = list(range(env.rank, len(batches), env.world_size)) + [0] * padding  # each batch's place in the global order
    generator = torch.Generator(env.device)
    loader = DataLoader(dataset, batch_sampler=mine + batches[:1] * padding, collate_fn=objective.collate)
    stats = {}
    logits = model.token_losses.wants_logits  # False (--loss_chunk_rows): final hidden states, scored chunk by chunk
    for i, batch in enumerate(loader):
        generator.manual_seed(item_seed(seed, numbers[i]))
        batch = objective.prepare_batch({k: v.to(env.device) for k, v in batch.items()}, generator)
        with autocast():
            s_out, _ = model(objective.model_inputs(batch), logits=logits)
            t_out, _ = teacher.outputs(batch, split="eval", logits=logits)
            # Several teachers: each one alone on every example too (a sharded one runs on every rank)
            alone = [member.outputs(batch, split="eval", logits=logits)[0] for member in teacher.members]
            if i < len(mine):  # under autocast: lm.HeadRows apply the LM heads in eval_batch
                s_out, t_out = model.token_losses.eval_outputs(s_out, t_out)
                for k, v in objective.eval_batch(_float(s_out), _float(t_out), batch).items():
                    stats.setdefault(k, []).append(v)
                for j, out in enumerate(alone):
                    out = model.token_losses.member_outputs(j, out) if isinstance(out, torch.Tensor) else out
                    if isinstance(out, (torch.Tensor, HeadRows)):  # logits (or hidden states); a cache has none at evaluation
                        for k, v in objective.eval_batch(_float(s_out), _float(out), batch).items():
                            if k.startswith("teacher_"):
                                stats.setdefault(f"{j + 1}:{k}", []).append(v)
    local = {k: torch.cat(v) for k, v in stats.items()}
    gathered = all_gather_objects(local, env)
    merged = {k: torch.cat([g[k] for g in gathered if k in g]) for k in set().union(*gathered)}
    model.train(was_training)
    metrics = objective.eval_metrics({k: v for k, v in merged.items() if ":" not in k})
    for j in sorted({k.split(":")[0] for k in merged if ":" in k}):  # teacher j alone: eval_teacher<j>_*
        own = {k.split(":", 1)[1]: v for k, v in merged.items() if k.startswith(f"{j}:")}
        alone = objective.eval_metrics({**{k: v for k, v in merged.items() if ":" not in k and not k.startswith("teacher_")}, **own})
        metrics.update({f"teacher{j}_{k.removeprefix('teacher_')}": v for k, v in alone.items() if k.startswith("teacher_")})
    return {f"eval_{k}": v for k, v in metrics.items()}


def _float(out):
    """Logits in fp32 (HeadRows and None as they are)."""
    return out.float() if isinstance(out, torch.Tensor) else out
