"""Binarized token sequences (scripts/binarized_data.py) as a training set for mlm/clm.

Two on-disk formats, both written by binarized_data.py:
- the reference's `*.pickle`: a list of 1-D integer numpy arrays, one per line;
- `*.tokens.npy` + `*.offsets.npy`: every sequence's ids back to back and the [N+1] start
  offsets. Memory-mapped, so a 3.3B-token corpus costs no RAM until read.

Either way the data becomes one flat token array plus per-sequence spans, and the
reference's checks run vectorised over those spans: sequences longer than the model accepts
are cut into chunks (the start/end special tokens re-added), then sequences of length
<= 11 and those made of >= 50% unknown tokens are dropped.
"""

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from distillation.data.safe_pickle import load_data_pickle
from distillation.errors import InputError

PICKLE_SUFFIXES = (".pickle", ".pkl")
TOKENS_SUFFIX, OFFSETS_SUFFIX = ".tokens.npy", ".offsets.npy"
MIN_LENGTH = 12  # the reference drops sequences of length <= 11
MAX_UNKNOWN = 0.5


def is_binarized_path(path: str) -> bool:
    return path.endswith(PICKLE_SUFFIXES) or path.endswith(TOKENS_SUFFIX)


def ids_dtype(vocab_size: int) -> np.dtype:
    """Storage type of token ids, as the reference: uint16 below 65536 tokens (BERT, GPT-2,
    Llama-2), else int32."""
    return np.dtype(np.uint16 if vocab_size < 1 << 16 else np.int32)


def boundary_tokens(tokenizer) -> Tuple[int, int]:
    """(start, end) ids wrapped around every sequence: [CLS]/[SEP] for BERT, <s>/</s> for
    RoBERTa, bos/eos for causal LMs (GPT-2's are both <|endoftext|>)."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None:
        raise InputError("--tokenizer_name: the tokenizer has neither cls/sep nor bos/eos tokens to wrap sequences with")
    return start, end


def load_binarized(path: str, flag: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read either format. Returns (tokens [T] integer array, offsets [N+1] int64): sequence i
    is tokens[offsets[i]:offsets[i+1]]. The npy format comes back memory-mapped."""
    if path.endswith(TOKENS_SUFFIX):
        return _load_npy(path, flag)
    if not os.path.isfile(path):
        raise InputError(f"{flag}: no such file '{path}'")
    what = "a binarized dataset"
    not_binarized = f"{flag}: '{path}' is not {what} (a pickled list of integer arrays from scripts/binarized_data.py)"
    data = load_data_pickle(path, flag, what)
    if not isinstance(data, (list, tuple)) or not all(
        isinstance(a, np.ndarray) and a.ndim == 1 and np.issubdtype(a.dtype, np.integer) for a in data
    ):
        raise InputError(not_binarized)
    if not data:
        raise InputError(f"{flag}: '{path}' holds no sequences")
    lengths = np.fromiter((len(a) for a in data), dtype=np.int64, count=len(data))
    return np.concatenate(data), np.concatenate([[0], np.cumsum(lengths)])


def _load_npy(path: str, flag: str) -> Tuple[np.ndarray, np.ndarray]:
    offsets_path = path[: -len(TOKENS_SUFFIX)] + OFFSETS_SUFFIX
    for p in (path, offsets_path):
        if not os.path.isfile(p):
            raise InputError(f"{flag}: no such file '{p}'")
    try:
        tokens = np.load(path, mmap_mode="r")
        offsets = np.load(offsets_path)
    except ValueError as err:
        raise InputError(f"{flag}: '{path}' is not a binarized dataset ({err})") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer) or offsets.ndim != 1 or len(offsets) < 2 \
            or offsets[0] != 0 or offsets[-1] != len(tokens) or np.any(np.diff(offsets) < 0):
        raise InputError(f"{flag}: '{path}' and its offsets do not form a binarized dataset")
    return tokens, offsets.astype(np.int64)


def count_in_spans(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, value: int, block: int = 1 << 16) -> np.ndarray:
    """Occurrences of `value` in tokens[starts[i]:ends[i]] for every span.

    Args:
        tokens: [T] ids (may be memory-mapped: read one block of spans at a time).
        starts, ends: [P] int64, non-decreasing, non-overlapping, starts < ends.
    Returns:
        [P] int64 counts.
    """
    out = np.empty(len(starts), dtype=np.int64)
    for i in range(0, len(starts), block):
        s, e = starts[i : i + block], ends[i : i + block]
        lo = s[0]
        hits = np.asarray(tokens[lo : e[-1]]) == value
        # reduceat over [s0, e0, s1, e1, ...] sums each span at even slots; the gaps land in
        # the odd slots, which are dropped (the final end is the array's end, so it is omitted).
        bounds = np.stack([s, e], axis=1).reshape(-1)[:-1] - lo
        out[i : i + block] = np.add.reduceat(hits, bounds, dtype=np.int64)[::2]
    return out


class LmSeqsDataset(Dataset):
    """Token sequences no longer than `max_len`, each item `{"input_ids": int64 array, "index": i}`.

    `lengths` (a list) feeds the length-grouped sampler."""

    ids_from_file = True  # the binarized file fixes every id (data/identity.py need not hash them)

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, max_len: int, start_id: int, end_id: int,
                 unk_id: Optional[int]):
        if max_len < 3:
            raise InputError(f"--max_seq_length: {max_len} leaves no room between the start and end tokens")
        self.tokens, self.start_id, self.end_id = tokens, start_id, end_id
        seq_start, seq_len = offsets[:-1], np.diff(offsets)
        # Long sequences become chunks of max_len - 2 source tokens, so that re-adding the
        # start/end token where a chunk lacks it never exceeds max_len (the reference's rule).
        step = max_len - 2
        n_pieces = np.where(seq_len > max_len, -(-seq_len // step), 1)
        seq = np.repeat(np.arange(len(seq_len)), n_pieces)
        k = np.arange(len(seq)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        long = seq_len[seq] > max_len
        start = seq_start[seq] + np.where(long, k * step, 0)
        span = np.where(long, np.minimum(step, seq_len[seq] - k * step), seq_len[seq])
        nonempty = span > 0
        add_start, add_end = np.zeros(len(span), bool), np.zeros(len(span), bool)
        add_start[nonempty] = long[nonempty] & (np.asarray(tokens[start[nonempty]]) != start_id)
        add_end[nonempty] = long[nonempty] & (np.asarray(tokens[start[nonempty] + span[nonempty] - 1]) != end_id)
        length = span + add_start + add_end

        keep = length >= MIN_LENGTH
        if unk_id is not None and keep.any():
            unknown = count_in_spans(tokens, start[keep], start[keep] + span[keep], unk_id)
            keep[np.flatnonzero(keep)[unknown >= MAX_UNKNOWN * length[keep]]] = False
        self.start, self.span = start[keep], span[keep]
        self.add_start, self.add_end = add_start[keep], add_end[keep]
        self.lengths: List[int] = length[keep].tolist()

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i) -> Dict:
        s = self.start[i]
        ids = np.asarray(self.tokens[s : s + self.span[i]], dtype=np.int64)
        if self.add_start[i] or self.add_end[i]:
            head = [self.start_id] if self.add_start[i] else []
            tail = [self.end_id] if self.add_end[i] else []
            ids = np.concatenate([np.array(head, np.int64), ids, np.array(tail, np.int64)])
        return {"input_ids": ids, "index": i}


def load_lm_sequences(path: str, flag: str, tokenizer, max_len: int) -> LmSeqsDataset:
    """A binarized file as an LmSeqsDataset, refused when it does not match `tokenizer`."""
    tokens, offsets = load_binarized(path, flag)
    start_id, end_id = boundary_tokens(tokenizer)
    if len(tokens):
        top = int(tokens.max())
        if top >= len(tokenizer):
            raise InputError(
                f"{flag}: token id {top} is outside the tokenizer's {len(tokenizer)} tokens: "
                f"was '{path}' binarized with another tokenizer?"
            )
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    firsts, lasts = np.asarray(tokens[offsets[nonempty]]), np.asarray(tokens[offsets[nonempty + 1] - 1])
    if np.any(firsts != start_id) or np.any(lasts != end_id):
        raise InputError(
            f"{flag}: sequences of '{path}' are not wrapped in this tokenizer's "
            f"{tokenizer.convert_ids_to_tokens(start_id)} ... {tokenizer.convert_ids_to_tokens(end_id)}: "
            "binarize it with the same --tokenizer_name"
        )
    dataset = LmSeqsDataset(tokens, offsets, max_len, start_id, end_id, tokenizer.unk_token_id)
    if not len(dataset):
        raise InputError(f"{flag}: no sequence of '{path}' is longer than {MIN_LENGTH - 1} tokens with < 50% unknown tokens")
    return dataset


def collate_lm(examples: List[Dict], pad_id: int, with_labels: bool) -> Dict[str, torch.Tensor]:
    """Pad to the batch's longest sequence.

    Returns input_ids / attention_mask [B, S] and index [B]; with `with_labels`, also
    labels [B, S]: the input ids, -100 on padding and on the first `prompt_len` tokens of
    examples that carry one (instruction prompts are context, not targets), and prompt_len [B]."""
    longest = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[row, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "index": torch.tensor([e["index"] for e in examples])}
    if with_labels:
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        prompt_len = torch.tensor([e.get("prompt_len", 0) for e in examples])
        for row, n in enumerate(prompt_len.tolist()):
            labels[row, :n] = -100
        batch["labels"], batch["prompt_len"] = labels, prompt_len
    return batch
