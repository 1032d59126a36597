"""Count every token id of a binarized dataset, for mlm's masking probabilities (the
reference's script).

    python scripts/token_counts.py --data_file binarized_data/dump.bert-base-uncased.pickle \\
        --token_counts_dump binarized_data/token_counts.bert-base-uncased.pickle --vocab_size 30522

Reads the pickle or the `.tokens.npy` format of scripts/binarized_data.py and writes a
pickled list of `vocab_size` counts (index = token id). Bad input: one line on stderr, exit 2.
"""

import argparse
import os
import pickle

import numpy as np

from distillation.cli import ArgumentParser, command
from distillation.data.lm_seqs_dataset import load_binarized
from distillation.errors import InputError


def count_tokens(tokens: np.ndarray, vocab_size: int, block: int = 1 << 26) -> np.ndarray:
    """Occurrences of each id in `tokens` [T] -> [vocab_size] int64, `block` tokens at a time
    (np.bincount widens its input to int64, so a memory-mapped corpus is read in pieces)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(tokens), block):
        part = np.bincount(np.asarray(tokens[i : i + block]), minlength=vocab_size)
        if len(part) > vocab_size:
            raise InputError(f"--vocab_size: the data holds token id {len(part) - 1}, not below --vocab_size {vocab_size}")
        counts += part
    return counts


def _main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_file", default="data/dump.bert-base-uncased.pickle", help="Binarized dataset.")
    parser.add_argument("--token_counts_dump", default="data/token_counts.bert-base-uncased.pickle", help="Output pickle.")
    parser.add_argument("--vocab_size", type=int, default=30522, help="The model's vocabulary size.")
    args = parser.parse_args(argv)
    if args.vocab_size < 1:
        raise InputError(f"--vocab_size must be >= 1 (got {args.vocab_size})")
    tokens, _ = load_binarized(args.data_file, "--data_file")
    counts = count_tokens(tokens, args.vocab_size)
    if os.path.dirname(args.token_counts_dump):
        os.makedirs(os.path.dirname(args.token_counts_dump), exist_ok=True)
    with open(args.token_counts_dump + ".tmp", "wb") as f:
        pickle.dump(counts.tolist(), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(args.token_counts_dump + ".tmp", args.token_counts_dump)
    print(f"{int(counts.sum())} tokens, {int((counts > 0).sum())} distinct ids -> {args.token_counts_dump}")


main = command(_main)
