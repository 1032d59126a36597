"""Teacher logits computed once, offline, and read back in training (`--teacher_logits DIR`).

`scripts/cache_teacher.py` runs the teacher over a dataset (distillation/cache_pass.py). For classification it keeps each
example's logits whole (`full`, fp32: 4·num_labels bytes). For clm it keeps, for every target
position (the positions the loss trains: all real tokens of text, the response of
instruction data), a compact picture of the teacher's distribution at temperature T:

- `topk`: the k most likely token ids and their log-probabilities, plus the log of the mass
  left outside them (the tail). Training compares k+1 buckets: the k tokens and "the rest",
  whose student mass is 1 - the student's mass on the k tokens. Any --divergence applies.
- `sampled` (random-sampling KD, after Anshumann et al. 2025, with an exact head): the `head`
  most likely ids with their log-probabilities, then k ids drawn from the rest of the
  distribution (repeats allowed), and the teacher's entropy. The cross-entropy
  H(p_t, p_s) = Σ_head p_t·(-log p_s) + (tail mass)·E_tail[-log p_s] is estimated by the mean
  over the draws; less the entropy it is an unbiased estimate of KL(p_t || p_s), and its
  gradient of the forward-KL gradient (forward_kl only). Keeping the head exact removes the
  variance of the tokens that would be drawn most. The k draws are systematic: one uniform
  offset, then one draw in each of k equal slices of the tail's mass, the likeliest tokens
  first, so a token holding more than 1/k of the tail is drawn about its share of times
  rather than at random (still unbiased; a quarter less variance than independent draws at
  T = 1 on SmolLM2, README).

Bytes per position: ids (uint16 up to a 65,536-token vocabulary, else int32) and fp16 values:
topk with k = 12 is 12·(2+2) + 2 = 50 bytes; sampled with head 4 and k = 23 (cache_teacher.py's
default at T ≤ 1) is 4·(2+2) + 23·2 + 2 = 64, as is head 0 and k = 31 (its default above T = 1);
dense fp16 is 2·vocab.

Layout of DIR: `manifest.json` (what was cached and from what: objective, teacher,
tokenizer and data file fingerprints, columns, template, max_seq_length, temperature, method, k,
dtypes; written once, last, by rename), `teacher_config/` (the teacher's config: the run takes
its labels and limits from it), `examples.npy` (data/identity.py's digest of every example's
token ids, so that a run which tokenises the same file differently is refused; absent for
binarized data, whose ids are the file's) and one group of `.npy` arrays per shard of
`shard_size` examples, read memory-mapped:
`shard-00000.ids.npy` [P, k], `.values.npy` [P, k] (or [examples, C]), `.tail.npy` [P] (topk) or
`.entropy.npy` [P] (sampled), for a topk cache of text records `.ends.npy` and `.kinds.npy` [P]
(where each position's token ends in its text, and whether it is whole: data/alignment.py; with
`tokenizer/`, they make it a cross-tokenizer cache, which a student of another tokenizer pairs
its own positions with at load time), `.rows.npy`
[examples + 1] offsets of each example's positions. A shard is complete once its `.rows.npy`
exists (written last, by rename), so an interrupted cache pass resumes by skipping complete
shards; under torchrun rank r writes shards r, r + world, ...
"""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from distillation.data.identity import file_sha256, first_difference
from distillation.errors import InputError
from distillation.losses import finite_log_probs, log_rest

FORMAT = 3  # 2: sampled keeps an exact head and the entropy; 3: examples.npy, systematic draws
EXAMPLES = "examples.npy"
METHODS = ("topk", "sampled", "full")  # full: classification's logits, whole
TEACHER_CONFIG = "teacher_config"  # the teacher's config.json, beside the shards: labels, vocabulary, positions
TOKENIZER = "tokenizer"  # a cross-tokenizer cache's tokenizer (the teacher's), whose tokens the targets and offsets are of
# What must match between a cache and the run that reads it (manifest key -> the flag to change).
MUST_MATCH = {"objective": "--objective", "data_sha256": "--data_file", "tokenizer_sha256": "--tokenizer_name/--student_name",
              "max_seq_length": "--max_seq_length", "prompt_template": "--prompt_template", "temperature": "--temperature",
              "text_column": "--text_column", "text_pair_column": "--text_pair_column", "n_examples": "--data_file"}


def tokenizer_sha256(tokenizer) -> str:
    """Of the token -> id table and the special tokens: what the cached ids mean (which ids each
    example was given is examples.npy's to say)."""
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

    topk: ids [N, K] the K most likely token ids, values [N, K] their teacher log-probabilities
    at T, tail [N] the log of the teacher mass outside them.
    sampled: ids [N, H + K] the H most likely ids then K draws from the rest, values [N, H] the
    head's log-probabilities at T, entropy [N] the teacher's entropy at T.
    rest_as_one (topk of a served teacher, which knows its top k at T = 1 only): values and tail
    are the k + 1 buckets at T = 1 tempered as k + 1 tokens (losses.tempered_as_buckets); the
    student's buckets must be tempered the same way to be compared with them."""

    method: str
    ids: torch.Tensor
    values: torch.Tensor
    tail: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    rest_as_one: bool = False


def sparse_targets(teacher_rows: torch.Tensor, method: str, k: int, temperature: float, generator, head: int = 0) -> SparseTargets:
    """[N, V] teacher logits -> their SparseTargets (fp32). Masked (-inf) logits have probability
    0: never drawn, and their log-probabilities are losses.LOG_ZERO rather than -inf."""
    raw = torch.log_softmax(teacher_rows.float() / temperature, dim=-1)
    logp = finite_log_probs(raw)
    if method == "topk":
        values, ids = logp.topk(k, dim=-1)
        return SparseTargets(method, ids, values, tail=log_rest(values))
    values, head_ids = logp.topk(head, dim=-1)
    p = raw.exp()
    rest = p.scatter(-1, head_ids, 0.0)
    rest[rest.sum(-1) <= 0] = 1.0  # the head holds everything: any draw, weighed by a tail mass of 0
    draws = systematic_draws(rest, k, generator)
    entropy = -(p * logp).sum(-1)
    return SparseTargets(method, torch.cat([head_ids, draws], dim=-1), values, entropy=entropy)


def systematic_draws(weights: torch.Tensor, k: int, generator, sorted_prefix: int = 256) -> torch.Tensor:
    """k draws per row, token x drawn k·w_x/Σw times in expectation (unbiased, as independent
    draws) but with less variance: the row's likeliest `sorted_prefix` tokens come first, then
    the others in id order; one uniform offset u places a draw at each of the k points
    (u + i)/k of that order's cumulative mass. A token over 1/k of the mass is drawn
    floor(k·w) or ceil(k·w) times, never 0.

    Args:
        weights: [N, V] non-negative, each row with a positive sum.
        k: draws per row. generator: torch.Generator on weights' device (None: global).
        sorted_prefix: how many of the likeliest tokens are put first (a full sort of V
            columns would cost more than it saves: the rest hold little mass each).
    Returns:
        [N, k] int64 token ids.
    """
    n, v = weights.shape
    top_w, top_ids = weights.topk(min(sorted_prefix, v), dim=-1)
    others = weights.scatter(-1, top_ids, 0.0)
    cdf = torch.cat([top_w, others], dim=-1).cumsum(dim=-1)
    cdf = cdf / cdf[:, -1:]
    u = torch.rand(n, 1, generator=generator, device=weights.device)
    points = (u + torch.arange(k, device=weights.device)) / k
    slot = torch.searchsorted(cdf, points.contiguous(), right=True).clamp(max=cdf.shape[1] - 1)
    in_top = slot < top_ids.shape[1]
    return torch.where(in_top, top_ids.gather(-1, slot.clamp(max=top_ids.shape[1] - 1)), slot - top_ids.shape[1])


def id_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def shard_stem(folder: str, shard: int) -> str:
    """Path prefix of one shard's arrays: `{stem}.{name}.npy`."""
    return os.path.join(folder, f"shard-{shard:05d}")


def shard_done(folder: str, shard: int) -> bool:
    return os.path.exists(f"{shard_stem(folder, shard)}.rows.npy")


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


def cached_offsets(folder: str, manifest: dict) -> list:
    """A cross-tokenizer cache's teacher side of every example, in order: ([], (ends, kinds)) of
    its target positions (data/cross_text.py pairs the student's positions with them)."""
    out = []
    for shard in range(manifest["shards"]):
        stem = shard_stem(folder, shard)
        try:
            rows, ends, kinds = (np.load(f"{stem}.{name}.npy") for name in ("rows", "ends", "kinds"))
        except (OSError, ValueError) as err:
            raise InputError(f"--teacher_logits: cannot read shard {shard} of '{folder}' ({type(err).__name__}); rerun "
                             "scripts/cache_teacher.py with the same flags to finish it") from None
        out += [([], (ends[a:b].tolist(), kinds[a:b].tolist())) for a, b in zip(rows[:-1], rows[1:])]
    return out


def check_examples(folder: str, digests: Optional[np.ndarray], flag: str, remedy: str) -> None:
    """Exit 2 when the examples (data/identity.py's digests, None for binarized data) were
    tokenised otherwise than the cache's: the same file and vocabulary, but another chat
    template or BOS token, would pair the teacher's targets with other prompts."""
    if digests is None:
        return
    path = os.path.join(folder, EXAMPLES)
    try:
        cached = np.load(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{flag}: cannot read '{path}' ({type(err).__name__}); {remedy}") from None
    difference = first_difference(digests, cached, "in the cache")
    if difference:
        raise InputError(f"{flag}: {difference}; {remedy}")


def check_identity(manifest: dict, identity: dict, flag: str = "--teacher_logits", skip=()) -> None:
    """Exit 2 naming the first thing that differs between a cache and this run (but the keys `skip`)."""
    for key, run_flag in MUST_MATCH.items():
        if key in skip or key == "temperature" and manifest.get("method") == "full":
            continue  # whole logits are kept untempered
        if manifest.get(key) != identity[key]:
            raise InputError(f"{flag}: the cache was made with another {key} ({manifest.get(key)!r}; this run: {identity[key]!r}): "
                             f"remake it for this run, or change {run_flag} to the cache's")
