"""Teacher logits computed once, offline, and read back in training (`--teacher_logits DIR`).

`scripts/cache_teacher.py` runs the teacher over a dataset. For classification it keeps each
example's logits whole (`full`, fp32: 4·num_labels bytes). For clm it keeps, for every target
position (the positions the loss trains: all real tokens of text, the response of
instruction data), a compact picture of the teacher's distribution at temperature T:

- `topk`: the k most likely token ids and their log-probabilities, plus the log of the mass
  left outside them (the tail). Training compares k+1 buckets: the k tokens and "the rest",
  whose student mass is 1 - the student's mass on the k tokens. Any --divergence applies.
- `sampled` (random-sampling KD, after Anshumann et al. 2025): n token ids drawn from the
  teacher's distribution with their teacher log-probabilities. The mean over the draws of
  log p_t(x) - log p_s(x) is an unbiased estimate of KL(p_t || p_s), and its gradient of the
  forward-KL gradient; forward_kl only.

Bytes per position: ids (uint16 up to a 65,536-token vocabulary, else int32) and fp16 values:
topk with k = 12 is 12·(2+2) + 2 = 50 bytes, sampled with n = 12 is 48 (dense fp16: 2·vocab).

Layout of DIR: `manifest.json` (what was cached and from what: objective, teacher,
tokenizer and data file fingerprints, columns, template, max_seq_length, temperature, method, k,
dtypes), `teacher_config/` (the teacher's config: the run takes its labels and limits from it)
and one group of `.npy` arrays per shard of `shard_size` examples, read memory-mapped:
`shard-00000.ids.npy` [P, k], `.values.npy` [P, k] (or [examples, C]), `.tail.npy` [P] (topk), `.rows.npy`
[examples + 1] offsets of each example's positions. A shard is complete once its `.rows.npy`
exists (written last, by rename), so an interrupted cache pass resumes by skipping complete
shards; under torchrun rank r writes shards r, r + world, ...
"""

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from distillation.errors import InputError
from distillation.objectives.lm import gather_rows

FORMAT = 1
METHODS = ("topk", "sampled", "full")  # full: classification's logits, whole
TEACHER_CONFIG = "teacher_config"  # the teacher's config.json, beside the shards: labels, vocabulary, positions
# What must match between a cache and the run that reads it (manifest key -> the flag to change).
MUST_MATCH = {"objective": "--objective", "data_sha256": "--data_file", "tokenizer_sha256": "--tokenizer_name/--student_name",
              "max_seq_length": "--max_seq_length", "prompt_template": "--prompt_template", "temperature": "--temperature",
              "text_column": "--text_column", "text_pair_column": "--text_pair_column", "n_examples": "--data_file"}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """Of the token -> id table and the special tokens: what decides the ids a cache holds."""
    table = json.dumps([sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]), tokenizer.all_special_tokens])
    return hashlib.sha256(table.encode()).hexdigest()


def run_identity(cfg, tokenizer, n_examples: int) -> dict:
    """The manifest keys that a run and its cache must share."""
    return {"objective": cfg.objective, "data_sha256": file_sha256(cfg.data_file), "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "max_seq_length": cfg.max_seq_length, "prompt_template": cfg.prompt_template, "temperature": cfg.temperature,
            "text_column": cfg.text_column, "text_pair_column": cfg.text_pair_column, "n_examples": n_examples}


@dataclass
class SparseTargets:
    """The cached teacher distribution of N target rows.

    ids: [N, K] token ids; values: [N, K] teacher log-probabilities at T; tail: [N] log of the
    teacher mass outside `ids` (topk) or None (sampled: K draws, repeats allowed)."""

    method: str
    ids: torch.Tensor
    values: torch.Tensor
    tail: Optional[torch.Tensor]


# --- writing (the cache pass) -----------------------------------------------------------------
def sparse_targets(teacher_rows: torch.Tensor, method: str, k: int, temperature: float, generator) -> SparseTargets:
    """[N, V] teacher logits -> their SparseTargets (fp32)."""
    logp = torch.log_softmax(teacher_rows.float() / temperature, dim=-1)
    if method == "topk":
        values, ids = logp.topk(k, dim=-1)
        kept = torch.logsumexp(values, dim=-1)
        tail = torch.log(torch.clamp(-torch.expm1(kept), min=1e-30))  # log(1 - kept mass)
        return SparseTargets(method, ids, values, tail)
    ids = torch.multinomial(logp.exp(), k, replacement=True, generator=generator)
    return SparseTargets(method, ids, logp.gather(-1, ids), None)


def id_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def write_shard(folder: str, shard: int, parts: dict, counts: list, dtypes: dict) -> None:
    """Save one shard: `parts[name]` are the [rows, ...] tensors of its batches in order, `counts`
    the rows of each example."""
    stem = os.path.join(folder, f"shard-{shard:05d}")
    arrays = {name: torch.cat(chunks).cpu().numpy().astype(dtypes[name]) for name, chunks in parts.items()}
    arrays["rows"] = np.cumsum([0] + counts).astype(np.int64)
    for name, array in arrays.items():  # rows last: its presence marks the shard complete
        np.save(f"{stem}.{name}.tmp.npy", array)
        os.replace(f"{stem}.{name}.tmp.npy", f"{stem}.{name}.npy")


def batch_entries(objective, logits: torch.Tensor, batch, method: str, k: int, temperature: float, generator):
    """({array name: [rows, ...] tensor}, rows of each example) of one batch of teacher logits:
    classification keeps each example's logits ("full"), clm its target positions' SparseTargets."""
    if method == "full":
        return {"values": logits.float()}, [1] * len(logits)
    positions, _ = objective.token_rows(batch)
    t = sparse_targets(gather_rows(logits, positions), method, k, temperature, generator)
    entries = {"ids": t.ids, "values": t.values, **({"tail": t.tail} if t.tail is not None else {})}
    return entries, torch.bincount(positions // logits.shape[1], minlength=logits.shape[0]).tolist()


def shard_done(folder: str, shard: int) -> bool:
    return os.path.exists(os.path.join(folder, f"shard-{shard:05d}.rows.npy"))


def read_manifest(folder: str, flag: str = "--teacher_logits") -> dict:
    path = os.path.join(folder, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"{flag}: no readable manifest.json in '{folder}' ({err.__class__.__name__}); make one with "
                         "scripts/cache_teacher.py") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{flag}: '{path}' is cache format {manifest.get('format')}, this version reads {FORMAT}")
    return manifest


def check_identity(manifest: dict, identity: dict, flag: str = "--teacher_logits") -> None:
    """Exit 2 naming the first thing that differs between a cache and this run."""
    for key, run_flag in MUST_MATCH.items():
        if key == "temperature" and manifest.get("method") == "full":
            continue  # whole logits are kept untempered
        if manifest.get(key) != identity[key]:
            raise InputError(f"{flag}: the cache was made with another {key} ({manifest.get(key)!r}; this run: {identity[key]!r}): "
                             f"remake it for this run, or change {run_flag} to the cache's")


def cache_pass(cfg, env, method: str, k: int, shard_size: int, batch_size: int, force: bool) -> dict:
    """Run cfg's teacher over cfg.data_file and write the cache to cfg.dump_path; returns the
    manifest. Shards already complete under the same manifest are kept (resume)."""
    from tqdm import tqdm

    from distillation.distributed import barrier
    from distillation.models import forward_inputs, load_configs, load_teacher, load_tokenizer, sequence_limit
    from distillation.objectives import build_objective

    tokenizer = load_tokenizer(cfg)
    teacher_config, _ = load_configs(cfg)
    cfg.max_seq_length = sequence_limit(cfg, tokenizer, teacher_config, teacher_config)
    objective = build_objective(cfg, tokenizer, teacher_config)
    dataset = objective.load_dataset(cfg.data_file, "--data_file")
    full = method == "full"
    dtypes = {"ids": id_dtype(teacher_config.vocab_size), "values": np.float32 if full else np.float16, "tail": np.float16}
    arrays = ["values"] if full else ["ids", "values"] + (["tail"] if method == "topk" else [])
    manifest = {"format": FORMAT, **run_identity(cfg, tokenizer, len(dataset)), "teacher": cfg.teacher_name, "method": method,
                "k": None if full else k, "vocab_size": teacher_config.vocab_size, "arrays": arrays,
                "dtypes": {n: np.dtype(dtypes[n]).name for n in arrays}, "shard_size": shard_size,
                "shards": -(-len(dataset) // shard_size), "seed": cfg.seed}
    per_row = teacher_config.num_labels if full else k
    manifest["bytes_per_row"] = sum(np.dtype(dtypes[n]).itemsize * (1 if n == "tail" else per_row) for n in arrays)
    path = os.path.join(cfg.dump_path, "manifest.json")
    if os.path.exists(path) and not force:
        old = read_manifest(cfg.dump_path, "--dump_path")
        changed = [key for key in manifest if old.get(key) != manifest[key]]
        if changed:
            raise InputError(f"--dump_path: '{cfg.dump_path}' holds a cache made with another {changed[0]} "
                             f"({old.get(changed[0])!r}; now {manifest[changed[0]]!r}); add --force to replace it")
    elif os.path.exists(cfg.dump_path) and os.listdir(cfg.dump_path) and not force:
        raise InputError(f"--dump_path: '{cfg.dump_path}' exists and holds no cache; add --force to replace it")
    teacher = load_teacher(cfg, objective, teacher_config).to(env.device)
    accepted = forward_inputs(teacher)
    if env.is_main:
        if force and os.path.isdir(cfg.dump_path):
            shutil.rmtree(cfg.dump_path)
        os.makedirs(cfg.dump_path, exist_ok=True)
        teacher_config.save_pretrained(os.path.join(cfg.dump_path, TEACHER_CONFIG))  # labels, vocabulary, positions
        with open(path, "w") as f:
            json.dump(manifest, f, indent=2)
    barrier(env)
    mine = [s for s in range(manifest["shards"]) if s % env.world_size == env.rank and not shard_done(cfg.dump_path, s)]
    bar = tqdm(total=sum(min(shard_size, len(dataset) - s * shard_size) for s in mine), desc="cache teacher", unit="example",
               disable=not env.is_main)
    for shard in mine:
        generator = torch.Generator(env.device).manual_seed(cfg.seed * 100_003 + shard)  # resumable, rank-independent
        indices = list(range(shard * shard_size, min((shard + 1) * shard_size, len(dataset))))
        parts, counts = {}, []
        for start in range(0, len(indices), batch_size):
            batch = objective.collate([dataset[i] for i in indices[start : start + batch_size]])
            batch = objective.prepare_batch({key: v.to(env.device) for key, v in batch.items()})
            with torch.no_grad():
                logits = teacher(**{key: v for key, v in objective.model_inputs(batch).items() if key in accepted}).logits
            entries, rows = batch_entries(objective, logits, batch, method, k, cfg.temperature, generator)
            for name, tensor in entries.items():
                parts.setdefault(name, []).append(tensor)
            counts += rows
            bar.update(len(rows))
        write_shard(cfg.dump_path, shard, parts, counts, dtypes)
    bar.close()
    barrier(env)
    return manifest


# --- reading (training) -----------------------------------------------------------------------
class OfflineTeacher:
    """Serves a cache's teacher outputs for training batches: SparseTargets (clm) or the logits
    [B, C] (classification). No model; nothing for evaluation (it reports the student only)."""

    model = None

    def __init__(self, folder: str, manifest: dict, objective, device):
        self.objective, self.device, self.method = objective, device, manifest["method"]
        self.sparse = self.method != "full"  # what token_losses_for needs to know
        self.rows, self.arrays = [], []
        for shard in range(manifest["shards"]):
            stem = os.path.join(folder, f"shard-{shard:05d}")
            if not shard_done(folder, shard):
                raise InputError(f"--teacher_logits: shard {shard} of '{folder}' is missing or incomplete; "
                                 "rerun scripts/cache_teacher.py with the same flags to finish it")
            try:
                self.arrays.append({n: np.load(f"{stem}.{n}.npy", mmap_mode="r") for n in manifest["arrays"]})
                self.rows.append(np.load(f"{stem}.rows.npy"))
            except (OSError, ValueError) as err:
                raise InputError(f"--teacher_logits: cannot read shard {shard} of '{folder}' ({err})") from None
            if any(len(a) != self.rows[-1][-1] for a in self.arrays[-1].values()):
                raise InputError(f"--teacher_logits: shard {shard} of '{folder}' is truncated")
        self.shard_size = manifest["shard_size"]

    def outputs(self, batch, with_hidden: bool = False, split: str = "train", logits: bool = True):
        """(the batch's cached teacher outputs, in the objective's row order; None) for training,
        (None, None) for evaluation."""
        if split != "train":
            return None, None
        parts = {}
        for index in batch["index"].tolist():
            shard, i = divmod(index, self.shard_size)
            start, end = self.rows[shard][i], self.rows[shard][i + 1]
            for name, array in self.arrays[shard].items():
                parts.setdefault(name, []).append(torch.from_numpy(np.array(array[start:end])))  # a copy: memmaps are read-only
        cat = {n: torch.cat(p).to(self.device) for n, p in parts.items()}
        expected = len(self.objective.token_rows(batch)[0]) if self.sparse else len(batch["index"])
        if len(cat["values"]) != expected:
            raise InputError(f"--teacher_logits: the cache holds {len(cat['values'])} rows for this batch, the data gives "
                             f"{expected}: it was made from other data or settings")
        if not self.sparse:
            return cat["values"], None
        return SparseTargets(self.method, cat["ids"].long(), cat["values"].float(),
                             cat["tail"].float() if "tail" in cat else None), None

    def parameters(self):
        return None
