"""Tokenise a text file, one sequence per line, for mlm/clm training (the reference's script).

    python scripts/binarized_data.py --file_path data/dump.txt --tokenizer_type bert \\
        --tokenizer_name bert-base-uncased --dump_file binarized_data/dump

Each non-empty line becomes [CLS] line [SEP] (or <s> line </s>, or bos line eos: the
tokenizer's own tokens). The file is read in chunks of --batch_lines lines, each tokenised in
one batched call of the fast tokenizer, so only the ids (uint16 when the vocabulary has fewer
than 65536 tokens, else int32) are held, never Python lists of the whole corpus. Sequences are
shuffled with --seed. Writes `{dump_file}.{tokenizer name}.pickle` (the reference's format:
a list of numpy arrays) and/or `.tokens.npy` + `.offsets.npy` (memory-mapped by the
dataset; prefer it for large corpora). Bad input: one line on stderr, exit code 2.
"""

import argparse
import itertools
import os
import pickle
import time

import numpy as np
from tqdm.auto import tqdm

from distillation.cli import ArgumentParser, command
from distillation.data.lm_seqs_dataset import (
    OFFSETS_SUFFIX,
    TOKENS_SUFFIX,
    boundary_tokens,
    ids_dtype,
)
from distillation.errors import InputError


def _main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file_path", default="data/dump.txt", help="Text file, one sequence per line.")
    parser.add_argument("--tokenizer_type", default="bert", choices=("bert", "roberta", "gpt2"),
                        help="Kept for the reference's commands; the special tokens come from the tokenizer itself.")
    parser.add_argument("--tokenizer_name", default="bert-base-uncased", help="Tokenizer: hub name or local folder.")
    parser.add_argument("--dump_file", default="data/dump", help="Output prefix.")
    parser.add_argument("--format", default="pickle", choices=("pickle", "npy", "both"),
                        help="pickle: the reference's list of arrays; npy: flat tokens + offsets, memory-mapped.")
    parser.add_argument("--seed", type=int, default=56, help="Seed of the shuffle.")
    parser.add_argument("--batch_lines", type=int, default=10000, help="Lines tokenised per batched call.")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.file_path):
        raise InputError(f"--file_path: no such file '{args.file_path}'")
    if args.batch_lines < 1:
        raise InputError(f"--batch_lines must be >= 1 (got {args.batch_lines})")
    tokenizer = _load_tokenizer(args.tokenizer_name)
    start_id, end_id = boundary_tokens(tokenizer)
    dtype = ids_dtype(len(tokenizer))

    began = time.time()
    tokens, offsets = tokenize_file(args.file_path, tokenizer, start_id, end_id, dtype, args.batch_lines)
    if len(offsets) == 1:
        raise InputError(f"--file_path: '{args.file_path}' has no non-empty line")
    order = np.random.default_rng(args.seed).permutation(len(offsets) - 1)
    tokens, offsets = reorder(tokens, offsets, order)

    prefix = f"{args.dump_file}.{os.path.basename(os.path.normpath(args.tokenizer_name))}"
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    written = []
    if args.format in ("pickle", "both"):
        sequences = [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        written.append(_atomic(prefix + ".pickle", lambda f: pickle.dump(sequences, f, protocol=pickle.HIGHEST_PROTOCOL)))
    if args.format in ("npy", "both"):
        written.append(_atomic(prefix + TOKENS_SUFFIX, lambda f: np.save(f, tokens)))
        written.append(_atomic(prefix + OFFSETS_SUFFIX, lambda f: np.save(f, offsets)))
    print(
        f"{len(offsets) - 1} sequences, {len(tokens)} tokens ({np.dtype(dtype).name}) in {time.time() - began:.1f}s "
        f"-> {', '.join(written)}"
    )


def _load_tokenizer(name):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--tokenizer_name: cannot load a tokenizer from '{name}' ({type(err).__name__})") from None
    if not tokenizer.is_fast:
        raise InputError(f"--tokenizer_name: '{name}' has no fast tokenizer; batched tokenisation needs one")
    return tokenizer


def tokenize_file(path, tokenizer, start_id, end_id, dtype, batch_lines):
    """Every non-empty (stripped) line as start + ids + end. Returns (tokens [T] dtype,
    offsets [N+1] int64) in file order; memory is the ids themselves plus one chunk of text."""
    token_chunks, length_chunks = [], []
    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="binarize") as bar:
        while True:
            raw = list(itertools.islice(f, batch_lines))
            if not raw:
                break
            bar.update(sum(len(line) for line in raw))
            lines = [s for s in (line.decode("utf-8", errors="replace").strip() for line in raw) if s]
            if not lines:
                continue
            ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
            lengths = np.fromiter((len(x) + 2 for x in ids), dtype=np.int64, count=len(ids))
            flat = itertools.chain.from_iterable(itertools.chain((start_id,), x, (end_id,)) for x in ids)
            token_chunks.append(np.fromiter(flat, dtype=dtype, count=int(lengths.sum())))
            length_chunks.append(lengths)
    lengths = np.concatenate(length_chunks) if length_chunks else np.zeros(0, np.int64)
    tokens = np.concatenate(token_chunks) if token_chunks else np.zeros(0, dtype)
    return tokens, np.concatenate([[0], np.cumsum(lengths)])


def reorder(tokens, offsets, order, block=1 << 20):
    """Sequences in the order `order` [N]: (tokens [T], offsets [N+1]), gathered one block of
    sequences at a time so the index arrays stay small."""
    lengths = np.diff(offsets)[order]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)])
    out = np.empty_like(tokens)
    for i in range(0, len(order), block):
        seqs, lens = order[i : i + block], lengths[i : i + block]
        # position j of the block's output comes from offsets[seq] + (j - its output start)
        local_start = np.repeat(new_offsets[i : i + len(seqs)] - new_offsets[i], lens)
        source = np.repeat(offsets[seqs], lens) + np.arange(lens.sum()) - local_start
        out[new_offsets[i] : new_offsets[i] + lens.sum()] = tokens[source]
    return out, new_offsets


def _atomic(path, write):
    with open(path + ".tmp", "wb") as f:
        write(f)
    os.replace(path + ".tmp", path)
    return path


main = command(_main)
