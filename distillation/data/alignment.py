"""Where two tokenizations of one text meet: the alignment behind a teacher with another tokenizer.

Both tokenizers read the same text and say where each of their tokens ends in it (character
offsets). Position i of a causal LM predicts what follows the end of token i, so a student
position and a teacher position predict the same thing when their tokens end at the same
character. Every student position is paired with the teacher position that ends last at or
before it (two pointers over the two lists of ends: linear in the lengths); the pair is *exact*
where both end at the same character, and otherwise the teacher's prediction starts a little
earlier in the text. Tokens that cover no characters (BOS, [CLS], an appended EOS or [SEP]) end
where the token before them ends, and a trailing one never stands in for the text token that
predicts it; a token that ends inside a character (byte-level BPE) is never exact.

The two vocabularies share the tokens that spell exactly the same text (`shared_vocabulary`):
byte-level BPE tokens by their bytes, others by their decoded string, special tokens by name.
Every other teacher token stands for the student token its text starts with (`first_tokens`): a
teacher's " wherefore" is, to a student without it, a next text that starts with " where".
"""

import json
from typing import List, Sequence, Tuple

from transformers.convert_slow_tokenizer import bytes_to_unicode


# What a token's end is (token_ends): a character boundary it completes, a token of no text
# (its end is the text's so far), or a part of a character (byte-level BPE splits a character
# into several tokens; their offsets all end where the character does).
WHOLE, EMPTY, PART = 2, 1, 0


def token_ends(offsets: Sequence[Tuple[int, int]]) -> Tuple[List[int], List[int]]:
    """(ends [L], kinds [L]) from a tokenizer's offset mapping [(start, end)] in characters: the
    character each token ends at, and WHOLE, EMPTY (covers no character, e.g. special tokens:
    it ends where the token before it ends) or PART (the next token that covers text starts
    before this one's end: this one ends inside a character)."""
    ends, kinds, last = [], [], 0
    for start, end in offsets:
        last = max(last, end) if end > start else last
        ends.append(last)
        kinds.append(WHOLE if end > start else EMPTY)
    next_start = None
    for i in range(len(offsets) - 1, -1, -1):  # backwards: the next covering token's start
        start, end = offsets[i]
        if end > start:
            if next_start is not None and next_start < end:
                kinds[i] = PART
            next_start = start
    return ends, kinds


def align(student: Tuple[Sequence[int], Sequence[int]], teacher: Tuple[Sequence[int], Sequence[int]]) -> Tuple[List[int], List[bool]]:
    """Pair each student position with a teacher position, in one pass over both.

    Args:
        student: (ends [Ls], kinds [Ls]) of the student's tokens (token_ends); teacher: the same
            for the teacher's tokens of the same text.
    Returns:
        (teacher_position [Ls]: the teacher position that stands for the last character end at or
        before the student token's end, -1 where no teacher token ends there; exact [Ls]: True
        where both stand for the same character end, whole tokens or tokens of no text).
        A character end stands for the last WHOLE teacher token ending at it (never a trailing
        special token, which would stand in for the text token that predicts it), else the
        first token ending at it.
    """
    (s_ends, s_kinds), (t_ends, t_kinds) = student, teacher
    positions, exact = [], []
    j, best = 0, -1
    for end, kind in zip(s_ends, s_kinds):
        while j < len(t_ends) and t_ends[j] <= end:
            if best < 0 or t_ends[j] != t_ends[best] or t_kinds[j] == WHOLE:
                best = j
            j += 1
        positions.append(best)
        exact.append(best >= 0 and t_ends[best] == end and kind != PART and t_kinds[best] != PART)
    return positions, exact


def _token_keys(tokenizer) -> dict:
    """{key: id}: what each token spells. Byte-level BPE tokens (GPT-2, Llama 3, SmolLM2, Qwen)
    by their exact bytes, so a token that is part of a character keeps its identity; other
    tokenizers' by their decoded string; special tokens by name, apart from text."""
    backend = tokenizer.backend_tokenizer
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel"
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_tokens)
    keys = {}
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if token in special:
            key = ("special", token)
        elif byte_level and all(c in to_byte for c in token):
            key = bytes(to_byte[c] for c in token)
        else:
            key = backend.decoder.decode([token]).encode("utf-8") if backend.decoder else token.encode("utf-8")
        keys.setdefault(key, i)  # a key two tokens spell keeps the first id
    return keys


def first_tokens(student_tokenizer, teacher_tokenizer, shared: Tuple[List[int], List[int]]) -> List[int]:
    """[V_t] for each teacher token, the student token that stands for it: the one spelt alike
    where there is one (`shared`), else the first student token of its text; -1 where it has no
    text of its own (special tokens the student lacks, a byte-level token that is part of a character)."""
    tokens = teacher_tokenizer.convert_ids_to_tokens(list(range(len(teacher_tokenizer))))
    special = set(teacher_tokenizer.all_special_tokens)
    texts = [teacher_tokenizer.convert_tokens_to_string([t]) if t not in special else "" for t in tokens]
    texts = ["" if "\ufffd" in text else text for text in texts]
    firsts = student_tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = [ids[0] if text and ids else -1 for text, ids in zip(texts, firsts)]
    for s, t in zip(*shared):
        out[t] = s
    return out


def shared_vocabulary(student_tokenizer, teacher_tokenizer) -> Tuple[List[int], List[int]]:
    """(student ids [M], teacher ids [M]): the tokens both vocabularies hold, paired by what they spell."""
    student, teacher = _token_keys(student_tokenizer), _token_keys(teacher_tokenizer)
    pairs = sorted((i, teacher[key]) for key, i in student.items() if key in teacher)
    return [s for s, _ in pairs], [t for _, t in pairs]
