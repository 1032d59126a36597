"""The cache pass of scripts/cache_teacher.py: the teacher run once over a dataset, its outputs
written as the shards that `--teacher_logits` reads (distillation/offline_logits.py says what
they hold and how training reads them).

The teacher is a local model (--teacher_name) or a served one (--teacher_url, clm, the topk
method only: the server returns its top-k log-probabilities, not the whole distribution that
sampled draws or full logits need). A served pass asks through the served training teacher
(teachers/served.py: its identity checks, request and targets), a request of up to --batch_size
sequences at a time, SERVED_IN_FLIGHT requests in flight, so it runs at the server's speed; its
values are what a --teacher_url run trains on (at T != 1 the k + 1 buckets of
served.tempered_buckets). A served model has no config to keep: teacher_config/ holds a
stand-in (served_config_json) with the two things a clm run reads from it, the served
vocabulary and the server's longest sequence.
"""

import json
import os
import shutil

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoConfig

from distillation.distributed import barrier
from distillation.errors import InputError, TeacherUnavailable, TrainingStopped
from distillation.data.cross_text import load_cross_text
from distillation.data.identity import example_digests
from distillation.models import autocast_dtype, check_pair, load_configs, load_teacher, load_tokenizer, sequence_limit
from distillation.objectives import build_objective
from distillation.objectives.lm import gather_rows
from distillation.offline_logits import (
    EXAMPLES, FORMAT, TEACHER_CONFIG, TOKENIZER, SparseTargets, check_examples, id_dtype, read_manifest, run_identity, shard_done,
    shard_stem, sparse_targets,
)
from distillation.teachers import LocalTeacher
from distillation.teachers.served import served_client, served_teacher
from distillation.teachers.served_client import ServerError

SERVED_IN_FLIGHT = 4  # requests a served pass keeps open (teachers/served.py's pool has 4 workers)


def cache_pass(cfg, env, method: str, k: int, head: int, shard_size: int, batch_size: int, force: bool) -> dict:
    """Run cfg's teacher over cfg.data_file and write the cache to cfg.dump_path; returns the
    manifest. Shards already complete under the same manifest are kept (resume)."""
    tokenizer = load_tokenizer(cfg)
    served = None
    if cfg.teacher_url:
        if method != "topk":  # cache_teacher.py refuses it first
            raise InputError(f"--method {method}: a served teacher (--teacher_url) gives its top-k only")
        client, max_len = _served_limits(cfg)
        teacher_config = _config_of(served_config_json(client.vocab_size, max_len, "")) if max_len else None  # for the limit
        cfg.max_seq_length = sequence_limit(cfg, tokenizer, teacher_config, teacher_config)
        cfg.teacher_top_k = k  # the top-k asked, and the identity's probe digest taken at it
        objective = build_objective(cfg, tokenizer)
        served = served_teacher(cfg, objective, tokenizer, env, client)  # exit 2 where the server's tokenizer is not the run's
        config_json = served_config_json(served.client.vocab_size, max_len or cfg.max_seq_length, served.identity)
        teacher_config = _config_of(config_json)
    else:
        teacher_config, _ = load_configs(cfg)
        cfg.max_seq_length = sequence_limit(cfg, tokenizer, teacher_config, teacher_config)
        objective = build_objective(cfg, tokenizer, teacher_config)
    dataset = objective.load_dataset(cfg.data_file, "--data_file")
    offsets = text_offsets(cfg, tokenizer, dataset, method)
    full = method == "full"
    dtypes = {"ids": id_dtype(teacher_config.vocab_size), "values": np.float32 if full else np.float16, "tail": np.float16,
              "entropy": np.float16, "ends": np.int32, "kinds": np.int8}
    arrays = {"full": ["values"], "topk": ["ids", "values", "tail"], "sampled": ["ids", "values", "entropy"]}[method]
    arrays = arrays + ["ends", "kinds"] * (offsets is not None)
    head = head if method == "sampled" else None
    manifest = {"format": FORMAT, **run_identity(cfg, tokenizer, len(dataset)), "teacher": cfg.teacher_name, "method": method,
                "k": None if full else k, "head": head, "vocab_size": teacher_config.vocab_size, "arrays": arrays,
                "dtypes": {n: np.dtype(dtypes[n]).name for n in arrays}, "shard_size": shard_size,
                "shards": -(-len(dataset) // shard_size), "seed": cfg.seed,
                "precision": cfg.precision, "teacher_dtype": cfg.teacher_dtype, "offsets": offsets is not None}
    if served is not None:  # the served model's name, vocabulary and probe digest: what a resume and a run compare
        manifest.update(teacher=served.identity, source="served", seed=None, precision=None, teacher_dtype=None)
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
    if served is None:
        model = load_teacher(cfg, objective, teacher_config)
        check_pair(model, None, tokenizer)
    teacher = served or LocalTeacher(model, objective, env.device, 0, 0, cache_train=False)
    barrier(env)  # every rank has read what is there before rank 0 writes
    if env.is_main and not resume:
        if force and os.path.isdir(cfg.dump_path):
            shutil.rmtree(cfg.dump_path)
        os.makedirs(cfg.dump_path, exist_ok=True)
        if served is None:
            teacher_config.save_pretrained(os.path.join(cfg.dump_path, TEACHER_CONFIG))  # labels, vocabulary, positions
        else:
            os.makedirs(os.path.join(cfg.dump_path, TEACHER_CONFIG))
            _replace(os.path.join(cfg.dump_path, TEACHER_CONFIG, "config.json"), lambda f: f.write(config_json.encode()))
        if digests is not None:
            _replace(os.path.join(cfg.dump_path, EXAMPLES), lambda f: np.save(f, digests))
        if offsets is not None:  # what a student of another tokenizer pairs its positions with
            tokenizer.save_pretrained(os.path.join(cfg.dump_path, TOKENIZER))
        # Written once, last: a folder with a manifest holds a complete header.
        _replace(path, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    barrier(env)
    mine = [s for s in range(manifest["shards"]) if s % env.world_size == env.rank and not shard_done(cfg.dump_path, s)]
    bar = tqdm(total=sum(min(shard_size, len(dataset) - s * shard_size) for s in mine), desc="cache teacher", unit="example",
               disable=not env.is_main)
    write_shards(teacher, objective, dataset, mine, shard_size, batch_size, cfg, dtypes, env, bar, (method, k, head), offsets)
    bar.close()
    barrier(env)
    return manifest


def _served_limits(cfg) -> tuple:
    """(the --teacher_url client, its vocabulary size learnt, the model's longest sequence or
    None); exit 2 when its server does not answer."""
    try:
        client = served_client(cfg)
        client.vocab_size  # noqa: B018 - asked now, while a failure is still exit 2
        return client, client.max_model_len
    except ServerError as err:
        raise InputError(f"--teacher_url: {err}") from None


def served_config_json(vocab_size: int, max_positions: int, identity: str) -> str:
    """teacher_config/config.json of a served teacher, whose config is on the server's machine: a
    stand-in that says only what a clm run reads from it (AutoConfig needs a model_type; the
    other fields of a "llama" config are its defaults and describe nothing)."""
    return json.dumps({"model_type": "llama", "vocab_size": vocab_size, "max_position_embeddings": max_positions,
                       "served_teacher": identity,
                       "note": "a served teacher's stand-in config: only vocab_size and max_position_embeddings (the "
                               "server's longest sequence) are the served model's"}, indent=2)


def _config_of(text: str):
    return AutoConfig.for_model(**json.loads(text))


def text_offsets(cfg, tokenizer, dataset, method: str):
    """Where each example's tokens end in its text, as [(ends, kinds)] (data/alignment.py), for a
    top-k cache of text records: stored beside the targets, they let a student of another
    tokenizer pair its positions with the cached ones (a cross-tokenizer cache); else None."""
    if method != "topk" or cfg.objective != "clm" or getattr(dataset, "unit", "") != "text records":
        return None
    texts = load_cross_text(cfg.data_file, "--data_file", tokenizer, tokenizer, cfg.max_seq_length, cfg.max_seq_length)
    if texts.input_ids != list(dataset.input_ids):  # not the tokens the targets are of: no offsets rather than wrong ones
        return None
    return [ends_kinds for _, ends_kinds in texts.student]


def write_shards(teacher, objective, dataset, shards: list, shard_size: int, batch_size: int, cfg, dtypes: dict, env, bar,
                 sparse: tuple, offsets=None) -> None:
    """Write `shards` from `teacher` (teachers/: local or served), a batch of --batch_size examples
    at a time, the next SERVED_IN_FLIGHT - 1 announced to it (teacher.prepare: a served teacher
    asks for them while this one's answer is awaited), each shard written once its last batch is
    in. A served teacher that fails past its retries stops the pass (exit 1) with the shards
    written so far kept: rerunning the command finishes the cache."""
    work = [(shard, list(range(start, min(start + batch_size, (shard + 1) * shard_size, len(dataset)))))
            for shard in shards for start in range(shard * shard_size, min((shard + 1) * shard_size, len(dataset)), batch_size)]
    made, amp = {}, autocast_dtype(cfg.precision)

    def batch_at(i):
        if i not in made:
            batch = objective.collate([dataset[j] for j in work[i][1]])
            made[i] = objective.prepare_batch({key: v.to(env.device) for key, v in batch.items()})
        return made[i]

    parts, counts = {}, []
    for i, (shard, indices) in enumerate(work):
        if not counts:  # a shard's first batch: its draws are seeded by the shard (resumable, rank-independent)
            generator = torch.Generator(env.device).manual_seed(cfg.seed * 100_003 + shard)
        batch = batch_at(i)
        try:
            teacher.prepare([batch], [batch_at(j) for j in range(i + 1, min(i + SERVED_IN_FLIGHT, len(work)))])
            with torch.autocast(env.device.type, dtype=amp, enabled=amp is not None):
                outputs, _ = teacher.outputs(batch)
        except TeacherUnavailable as err:
            raise TrainingStopped(f"--teacher_url: {err}; the complete shards are kept: rerun the same command to finish "
                                  "the cache") from None
        del made[i]
        entries, rows = batch_entries(objective, outputs, batch, *sparse, cfg.temperature, generator)
        if offsets is not None:  # each target row's token: where it ends in the text, and its kind
            for name, column in (("ends", 0), ("kinds", 1)):
                entries[name] = torch.tensor([v for j, n in zip(indices, rows) for v in offsets[j][column][:n]])
        for name, tensor in entries.items():
            parts.setdefault(name, []).append(tensor)
        counts += rows
        bar.update(len(indices))
        if i + 1 == len(work) or work[i + 1][0] != shard:
            write_shard(cfg.dump_path, shard, parts, counts, dtypes)
            parts, counts = {}, []


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


def batch_entries(objective, outputs, batch, method: str, k: int, head, temperature: float, generator):
    """({array name: [rows, ...] tensor}, rows of each example) of one batch of teacher outputs:
    classification keeps each example's logits ("full"); clm its target positions' SparseTargets,
    drawn from the logits, or as a served teacher gave them (already at `temperature`)."""
    if method == "full":
        return {"values": outputs.float()}, [1] * len(outputs)
    positions, _ = objective.token_rows(batch)
    if isinstance(outputs, SparseTargets):
        t = outputs
    else:
        t = sparse_targets(gather_rows(outputs, positions, objective.columns), method, k, temperature, generator, head or 0)
    entries = {"ids": t.ids, "values": t.values, "tail": t.tail, "entropy": t.entropy}
    entries = {name: tensor for name, tensor in entries.items() if tensor is not None}
    return entries, torch.bincount(positions // batch["input_ids"].shape[1], minlength=len(batch["input_ids"])).tolist()
