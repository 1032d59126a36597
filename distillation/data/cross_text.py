"""Text read by two tokenizers: the data of a teacher with another tokenizer (clm).

Each item is one text, tokenised by the student's tokenizer and by the teacher's, with where
each token ends in the text; the data loader aligns the two (alignment.align, linear) when it
fetches the item, so the training loop gets the pairs ready. Two sources:

- a `.txt` file: read whole, tokenised by the student and cut into blocks of `max_len` student
  tokens; each block's text is then tokenised by the teacher (neither adds special tokens, as
  the one-tokenizer path's blocks have none);
- text records (`{"text": ...}`): each text with each tokenizer's own special tokens and EOS.

The teacher's ids are cut at `teacher_max_len` (what the teacher accepts); the student positions
past its last token pair with that token (ULD) or with none.
"""

from typing import Dict, List, Optional

import torch
from torch.utils.data import Dataset

from distillation.data.alignment import align, token_ends
from distillation.data.lm_seqs_dataset import collate_lm
from distillation.data.lm_text import _without_trailing_end
from distillation.data.records import read_records
from distillation.errors import InputError


class CrossTokenTexts(Dataset):
    """Items {"input_ids", "prompt_len", "index", "teacher_ids", "teacher_position", "aligned"}: the
    student's ids, the teacher's ids of the same text, and for each student position its teacher
    position (-1: none) and whether the two end at the same character."""

    def __init__(self, student: List[tuple], teacher: List[tuple], unit: str, read: str = "", dropped: int = 0):
        self.student, self.teacher = student, teacher  # per text: (ids, (ends, kinds))
        self.prompt_lens = [0] * len(student)
        self.routes, self.unit, self.read, self.dropped, self.dropped_why = None, unit, read, dropped, "shorter than 2 tokens"
        self.unknown_share = 0.0
        self.lengths = [len(ids) for ids, _ in student]

    @property
    def input_ids(self) -> List[List[int]]:
        return [ids for ids, _ in self.student]

    def __len__(self):
        return len(self.student)

    def exact_share(self) -> float:
        """The share of the student's target positions whose teacher position ends at the same character."""
        exact = [self[i]["aligned"][:-1] for i in range(len(self))]  # the last position predicts nothing
        return sum(map(sum, exact)) / max(sum(map(len, exact)), 1)

    def __getitem__(self, i) -> Dict:
        (ids, ends), (teacher_ids, teacher_ends) = self.student[i], self.teacher[i]
        position, exact = align(ends, teacher_ends)  # in the data loader's workers
        return {"input_ids": ids, "prompt_len": 0, "index": i, "teacher_ids": teacher_ids, "teacher_position": position, "aligned": exact,
                "teacher_rows": len(teacher_ends[0])}


def load_cross_text(path: str, flag: str, tokenizer, teacher_tokenizer, max_len: int, teacher_max_len: int,
                    cached: Optional[List[tuple]] = None) -> CrossTokenTexts:
    """A `.txt` file or text records, read by both tokenizers (see the module's docstring).
    `cached`: the teacher's side of every record as a cross-tokenizer cache holds it, ([], (ends,
    kinds)) of its target positions, in place of the teacher's tokenizer (text records only)."""
    if cached is not None and path.endswith(".txt"):
        raise InputError(f"{flag}: a cross-tokenizer cache (--teacher_logits) pairs text records, not the blocks of a .txt file "
                         "(they are cut by the student's tokens); give the text as records ({\"text\": ...})")
    if path.endswith(".txt"):
        texts, unit, read = _text_blocks(path, flag, tokenizer, max_len)
        special = False
    else:
        records = read_records(path, flag)
        if "text" not in records[0] or "instruction" in records[0]:
            raise records.error(0, "a teacher with another tokenizer (--teacher_tokenizer) reads text records "
                                   "({\"text\": ...}) or a .txt file; instruction records are not supported with it yet")
        texts = [records.column(i, "text", "text field") for i in range(len(records))]
        unit, read, special = "text records", "", True
    student = [_tokens(t, tokenizer, special, max_len) for t in texts]
    if cached is not None and len(cached) != len(texts):
        raise InputError(f"{flag}: the cache (--teacher_logits) holds {len(cached)} examples, '{path}' has {len(texts)} records: "
                         "it was made from other data")
    teacher = cached or [_tokens(t, teacher_tokenizer, special, teacher_max_len) for t in texts]
    kept = [i for i, (ids, _) in enumerate(student) if len(ids) >= 2]  # one token predicts nothing
    if not kept:
        raise InputError(f"{flag}: '{path}' has no text of 2 tokens or more")
    return CrossTokenTexts([student[i] for i in kept], [teacher[i] for i in kept], unit, read, dropped=len(texts) - len(kept))


def _tokens(text: str, tokenizer, special: bool, max_len: int) -> tuple:
    """(ids, (ends, kinds)) of `text`: with the tokenizer's special tokens and one EOS when `special`."""
    encoded = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if special:
        kept = len(_without_trailing_end(ids, tokenizer))
        ids, offsets = ids[:kept], offsets[:kept]
        if tokenizer.eos_token_id is not None:  # one EOS, whatever the tokenizer appends (covers no text)
            ids, offsets = ids + [tokenizer.eos_token_id], offsets + [(0, 0)]
    ends, kinds = token_ends(offsets)
    return ids[:max_len], (ends[:max_len], kinds[:max_len])


def _text_blocks(path: str, flag: str, tokenizer, max_len: int) -> tuple:
    """The texts of consecutive blocks of `max_len` student tokens of the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        raise InputError(f"{flag}: no such file '{path}'") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{flag}: '{path}' is not UTF-8 text ({err.reason} at byte {err.start})") from None
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    blocks = [offsets[i : i + max_len] for i in range(0, len(offsets), max_len)]
    texts = [text[block[0][0] : block[-1][1]] for block in blocks]
    return texts, f"blocks of {max_len} tokens", f"{text.count(chr(10)):,} lines, {len(offsets):,} tokens"


def collate_cross(examples: List[Dict], pad_id: int, teacher_pad_id: int) -> Dict[str, torch.Tensor]:
    """collate_lm's batch of the student's ids, and the teacher's: teacher_input_ids,
    teacher_attention_mask [B, S_t] (S_t = 0 from a cache); teacher_position [B, S] (-1: none, and
    on padding) and aligned [B, S] bool, per student position; teacher_rows [B]."""
    batch = collate_lm(examples, pad_id, with_labels=True)
    teacher = collate_lm([{"input_ids": e["teacher_ids"], "index": e["index"]} for e in examples], teacher_pad_id, with_labels=True)
    batch["teacher_input_ids"], batch["teacher_attention_mask"] = teacher["input_ids"], teacher["attention_mask"]
    batch["teacher_labels"] = teacher["labels"]
    position = torch.full_like(batch["input_ids"], -1)
    aligned = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for row, e in enumerate(examples):
        position[row, : len(e["teacher_position"])] = torch.tensor(e["teacher_position"])
        aligned[row, : len(e["aligned"])] = torch.tensor(e["aligned"])
    batch["teacher_position"], batch["aligned"] = position, aligned
    batch["teacher_rows"] = torch.tensor([e["teacher_rows"] for e in examples])  # the teacher positions each example has
    return batch
