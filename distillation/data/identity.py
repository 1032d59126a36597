"""What identifies a run's data: file digests, and a digest of the token ids of every example.

A file's sha256 says the text is the same; it does not say the ids are. Two tokenizers with one
vocabulary can still turn the same record into other ids (a chat template, a BOS token, a
normaliser), so a teacher cache or a checkpoint made under one and read under the other would
pair the wrong tokens without a word. `example_digests` fingerprints the ids themselves, split
into an example's prompt and the rest so that the error can say which part moved.
"""

import functools
import hashlib
import os
import weakref
from typing import Optional

import numpy as np

# The columns of example_digests: digest of the prompt's ids, digest of the rest (response
# or whole text, then token types), the prompt's length and the example's length in tokens.
PROMPT, REST, PROMPT_LEN, LENGTH = range(4)


def file_sha256(path: str) -> str:
    """Read once per process for an unchanged file: the cache identity and the checkpoint
    fingerprint both ask for the data file's."""
    stat = os.stat(path)
    return _sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(ids) -> int:
    raw = np.asarray(ids, dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)


# By dataset object, for as long as it lives: the cache check and the checkpoint fingerprint share
# the digests, and a dataset (a distil() call's) is not kept alive past its run.
_DIGESTS = weakref.WeakKeyDictionary()


def example_digests(dataset) -> Optional[np.ndarray]:
    """[n, 4] int64, one row per example (columns PROMPT, REST, PROMPT_LEN, LENGTH), or None for
    a dataset whose ids are read from a binarized file (`ids_from_file`): there the file's
    sha256 and --max_seq_length already fix them, and hashing billions of tokens would not pay."""
    if getattr(dataset, "ids_from_file", False):
        return None
    if dataset not in _DIGESTS:
        _DIGESTS[dataset] = _digests(dataset)
    return _DIGESTS[dataset]


def _digests(dataset) -> np.ndarray:
    out = np.empty((len(dataset), 4), dtype=np.int64)
    for i in range(len(dataset)):
        item = dataset[i]
        ids, n = list(item["input_ids"]), int(item.get("prompt_len", 0))
        out[i] = (_digest(ids[:n]), _digest(ids[n:] + list(item.get("token_type_ids", ()))), n, len(ids))
    return out


def digests_sha256(digests: Optional[np.ndarray]) -> Optional[str]:
    """One digest of all examples' ids (None for binarized data)."""
    return None if digests is None else hashlib.sha256(np.ascontiguousarray(digests).tobytes()).hexdigest()


def first_difference(here: np.ndarray, there: np.ndarray, where: str) -> Optional[str]:
    """None when both runs tokenised every example alike; else a sentence naming the first example
    that differs and which part of it (`where`: "in the cache", "in the checkpoint")."""
    if here.shape != there.shape:
        return f"{len(here)} examples here, {len(there)} {where}"
    differs = np.flatnonzero((here != there).any(axis=1))
    if not len(differs):
        return None
    i = int(differs[0])
    a, b = here[i], there[i]
    rest_a, rest_b = a[LENGTH] - a[PROMPT_LEN], b[LENGTH] - b[PROMPT_LEN]
    if a[REST] == b[REST]:
        part = (f"its prompt differs ({a[PROMPT_LEN]} tokens here, {b[PROMPT_LEN]} {where}: another chat template, "
                "--prompt_template or BOS token?)")
    elif a[PROMPT] == b[PROMPT] and (a[PROMPT_LEN] or b[PROMPT_LEN]):
        part = f"its response differs ({rest_a} tokens here, {rest_b} {where}: another normaliser or EOS token?)"
    elif a[PROMPT] == b[PROMPT]:
        part = f"its token ids differ ({rest_a} tokens here, {rest_b} {where}: another tokenizer or normaliser?)"
    else:
        part = (f"its prompt and response differ ({a[PROMPT_LEN]} + {rest_a} tokens here, {b[PROMPT_LEN]} + {rest_b} {where}: "
                "another tokenizer or chat template?)")
    return f"example {i} tokenises differently: {part}; {len(differs)} of {len(here)} examples differ"
