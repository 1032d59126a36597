"""The cache pass of scripts/cache_teacher.py: the teacher run once over a dataset, its outputs
written as the shards that `--teacher_logits` reads (distillation/offline_logits.py says what
they hold and how training reads them)."""

import json
import os
import shutil

import numpy as np
import torch
from tqdm import tqdm

from distillation.distributed import barrier
from distillation.errors import InputError
from distillation.data.identity import example_digests
from distillation.models import autocast_dtype, check_pair, load_configs, load_teacher, load_tokenizer, sequence_limit
from distillation.objectives import build_objective
from distillation.objectives.lm import gather_rows
from distillation.offline_logits import (
    EXAMPLES, FORMAT, TEACHER_CONFIG, check_examples, id_dtype, read_manifest, run_identity, shard_done, shard_stem,
    sparse_targets,
)
from distillation.teachers import LocalTeacher


def cache_pass(cfg, env, method: str, k: int, head: int, shard_size: int, batch_size: int, force: bool) -> dict:
    """Run cfg's teacher over cfg.data_file and write the cache to cfg.dump_path; returns the
    manifest. Shards already complete under the same manifest are kept (resume)."""
    tokenizer = load_tokenizer(cfg)
    teacher_config, _ = load_configs(cfg)
    cfg.max_seq_length = sequence_limit(cfg, tokenizer, teacher_config, teacher_config)
    objective = build_objective(cfg, tokenizer, teacher_config)
    dataset = objective.load_dataset(cfg.data_file, "--data_file")
    full = method == "full"
    dtypes = {"ids": id_dtype(teacher_config.vocab_size), "values": np.float32 if full else np.float16, "tail": np.float16,
              "entropy": np.float16}
    arrays = {"full": ["values"], "topk": ["ids", "values", "tail"], "sampled": ["ids", "values", "entropy"]}[method]
    head = head if method == "sampled" else None
    manifest = {"format": FORMAT, **run_identity(cfg, tokenizer, len(dataset)), "teacher": cfg.teacher_name, "method": method,
                "k": None if full else k, "head": head, "vocab_size": teacher_config.vocab_size, "arrays": arrays,
                "dtypes": {n: np.dtype(dtypes[n]).name for n in arrays}, "shard_size": shard_size,
                "shards": -(-len(dataset) // shard_size), "seed": cfg.seed,
                "precision": cfg.precision, "teacher_dtype": cfg.teacher_dtype}
    width = {"values": teacher_config.num_labels} if full else {"ids": k + (head or 0), "values": k if head is None else head}
    manifest["bytes_per_row"] = sum(np.dtype(dtypes[n]).itemsize * width.get(n, 1) for n in arrays)
    digests = example_digests(dataset)
    path = os.path.join(cfg.dump_path, "manifest.json")
    resume = os.path.exists(path) and not force
    if resume:  # finish the cache that is there, if it is this one
        old = read_manifest(cfg.dump_path, "--dump_path")
        changed = [key for key in manifest if old.get(key) != manifest[key]]
        if changed:
            raise InputError(f"--dump_path: '{cfg.dump_path}' holds a cache made with another {changed[0]} "
                             f"({old.get(changed[0])!r}; now {manifest[changed[0]]!r}); add --force to replace it")
        check_examples(cfg.dump_path, digests, "--dump_path", "add --force to replace the cache")
    elif os.path.exists(cfg.dump_path) and os.listdir(cfg.dump_path) and not force:
        raise InputError(f"--dump_path: '{cfg.dump_path}' exists and holds no cache; add --force to replace it")
    model = load_teacher(cfg, objective, teacher_config)
    check_pair(model, None, tokenizer)
    teacher = LocalTeacher(model, objective, env.device, 0, 0, cache_train=False)
    barrier(env)  # every rank has read what is there before rank 0 writes
    if env.is_main and not resume:
        if force and os.path.isdir(cfg.dump_path):
            shutil.rmtree(cfg.dump_path)
        os.makedirs(cfg.dump_path, exist_ok=True)
        teacher_config.save_pretrained(os.path.join(cfg.dump_path, TEACHER_CONFIG))  # labels, vocabulary, positions
        if digests is not None:
            _replace(os.path.join(cfg.dump_path, EXAMPLES), lambda f: np.save(f, digests))
        # Written once, last: a folder with a manifest holds a complete header.
        _replace(path, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    barrier(env)
    mine = [s for s in range(manifest["shards"]) if s % env.world_size == env.rank and not shard_done(cfg.dump_path, s)]
    amp = autocast_dtype(cfg.precision)
    bar = tqdm(total=sum(min(shard_size, len(dataset) - s * shard_size) for s in mine), desc="cache teacher", unit="example",
               disable=not env.is_main)
    for shard in mine:
        generator = torch.Generator(env.device).manual_seed(cfg.seed * 100_003 + shard)  # resumable, rank-independent
        indices = list(range(shard * shard_size, min((shard + 1) * shard_size, len(dataset))))
        parts, counts = {}, []
        for start in range(0, len(indices), batch_size):
            batch = objective.collate([dataset[i] for i in indices[start : start + batch_size]])
            batch = objective.prepare_batch({key: v.to(env.device) for key, v in batch.items()})
            with torch.autocast(env.device.type, dtype=amp, enabled=amp is not None):
                logits, _ = teacher.outputs(batch)
            entries, rows = batch_entries(objective, logits, batch, method, k, head, cfg.temperature, generator)
            for name, tensor in entries.items():
                parts.setdefault(name, []).append(tensor)
            counts += rows
            bar.update(len(rows))
        write_shard(cfg.dump_path, shard, parts, counts, dtypes)
    bar.close()
    barrier(env)
    return manifest


def _replace(path: str, write) -> None:
    """Write a file under a temporary name, then rename it into place: readers see all or nothing."""
    with open(path + ".tmp", "wb") as f:
        write(f)
    os.replace(path + ".tmp", path)


def write_shard(folder: str, shard: int, parts: dict, counts: list, dtypes: dict) -> None:
    """Save one shard: `parts[name]` are the [rows, ...] tensors of its batches in order, `counts`
    the rows of each example."""
    stem = shard_stem(folder, shard)
    arrays = {name: torch.cat(chunks).cpu().numpy().astype(dtypes[name]) for name, chunks in parts.items()}
    arrays["rows"] = np.cumsum([0] + counts).astype(np.int64)
    for name, array in arrays.items():  # rows last: its presence marks the shard complete
        np.save(f"{stem}.{name}.tmp.npy", array)
        os.replace(f"{stem}.{name}.tmp.npy", f"{stem}.{name}.npy")


def batch_entries(objective, logits: torch.Tensor, batch, method: str, k: int, head, temperature: float, generator):
    """({array name: [rows, ...] tensor}, rows of each example) of one batch of teacher logits:
    classification keeps each example's logits ("full"), clm its target positions' SparseTargets."""
    if method == "full":
        return {"values": logits.float()}, [1] * len(logits)
    positions, _ = objective.token_rows(batch)
    t = sparse_targets(gather_rows(logits, positions, objective.columns), method, k, temperature, generator, head or 0)
    entries = {"ids": t.ids, "values": t.values, "tail": t.tail, "entropy": t.entropy}
    entries = {name: tensor for name, tensor in entries.items() if tensor is not None}
    return entries, torch.bincount(positions // logits.shape[1], minlength=logits.shape[0]).tolist()
