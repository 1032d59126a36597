"""Text read by two tokenizers: the data of a teacher with another tokenizer (clm).

Each item is one text, tokenised by the student's tokenizer and by the teacher's, with where
each token ends in the text; the data loader aligns the two (alignment.align, linear) when it
fetches the item, so the training loop gets the pairs ready. Three sources:

- a `.txt` file: read whole, tokenised by the student and cut into blocks of `max_len` student
  tokens; each block's text is then tokenised by the teacher (neither adds special tokens, as
  the one-tokenizer path's blocks have none);
- text records (`{"text": ...}`): each text with each tokenizer's own special tokens and EOS;
- instruction records: each model's prompt rendered by its own template (data/lm_text.py's
  encode_prompts: its chat template, else --prompt_template or Alpaca's), then the response, the
  text both share: offsets count from the response's start, and the last prompt token ends at
  it (it predicts the first response token in both models); the other prompt tokens cover nothing.

The teacher's ids are cut at `teacher_max_len` (what the teacher accepts); the student positions
past its last token pair with that token (ULD) or with none.
"""

from typing import Dict, List, Optional

import torch
from torch.utils.data import Dataset

from distillation.data.alignment import EMPTY, PART, WHOLE, align, token_ends
from distillation.data.lm_seqs_dataset import collate_lm
from distillation.data.lm_text import _without_trailing_end, encode_prompts, instruction_fields
from distillation.data.records import read_records
from distillation.errors import InputError


class CrossTokenTexts(Dataset):
    """Items {"input_ids", "prompt_len", "index", "teacher_ids", "teacher_position", "aligned"}: the
    student's ids, the teacher's ids of the same text, and for each student position its teacher
    position (-1: none) and whether the two end at the same character."""

    def __init__(self, student: List[tuple], teacher: List[tuple], unit: str, read: str = "", dropped: int = 0,
                 prompt_lens: Optional[List[tuple]] = None, dropped_why: Optional[str] = "shorter than 2 tokens",
                 texts: Optional[List[str]] = None):
        self.student, self.teacher = student, teacher  # per text: (ids, (ends, kinds))
        self.prompts = prompt_lens or [(0, 0)] * len(student)  # (the student's, the teacher's) prompt tokens
        self.prompt_lens = [n for n, _ in self.prompts]
        self.routes, self.unit, self.read, self.dropped, self.dropped_why = None, unit, read, dropped, dropped_why
        self.unknown_share = 0.0
        self.lengths = [len(ids) for ids, _ in student]
        # the UTF-8 bytes each side's targets spell, from its offsets (bits per byte: objectives/clm_cross.py)
        self.n_bytes = [(_target_bytes(text, s, n), _target_bytes(text, t, m))
                        for text, s, t, (n, m) in zip(texts or [""] * len(student), student, teacher, self.prompts)]

    @property
    def input_ids(self) -> List[List[int]]:
        return [ids for ids, _ in self.student]

    def __len__(self):
        return len(self.student)

    def exact_share(self, n: int) -> float:
        """The share of the first `n` examples' target positions whose teacher position ends at the same character."""
        # the positions that predict a target: from the last prompt token to the one before last
        exact = [self[i]["aligned"][max(m - 1, 0) : -1] for i, m in enumerate(self.prompt_lens[:n])]
        return sum(map(sum, exact)) / max(sum(map(len, exact)), 1)

    def __getitem__(self, i) -> Dict:
        (ids, ends), (teacher_ids, teacher_ends) = self.student[i], self.teacher[i]
        position, exact = align(ends, teacher_ends)  # in the data loader's workers
        return {"input_ids": ids, "prompt_len": self.prompts[i][0], "index": i, "teacher_ids": teacher_ids,
                "teacher_prompt_len": self.prompts[i][1], "teacher_position": position, "aligned": exact,
                "teacher_rows": len(teacher_ends[0]), "bytes": self.n_bytes[i][0], "teacher_bytes": self.n_bytes[i][1]}


def load_cross_text(path: str, flag: str, tokenizer, teacher_tokenizer, max_len: int, teacher_max_len: int,
                    cached: Optional[List[tuple]] = None, template: Optional[str] = None) -> CrossTokenTexts:
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
            if cached is not None:
                raise records.error(0, "a cross-tokenizer cache (--teacher_logits) pairs text records ({\"text\": ...}) only")
            return _instructions(records, tokenizer, teacher_tokenizer, max_len, teacher_max_len, template)
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
    return CrossTokenTexts([student[i] for i in kept], [teacher[i] for i in kept], unit, read, dropped=len(texts) - len(kept),
                           texts=[texts[i] for i in kept])


def _instructions(records, tokenizer, teacher_tokenizer, max_len: int, teacher_max_len: int, template) -> CrossTokenTexts:
    """Instruction records read by both tokenizers; records whose student prompt leaves no room for
    a response token are left out (as the one-tokenizer path does)."""
    prompts, outputs, ended = instruction_fields(records)
    student = [answered(p, o, e, tokenizer, max_len) for p, o, e in zip(encode_prompts(prompts, tokenizer, template), outputs, ended)]
    teacher = [answered(p, o, e, teacher_tokenizer, teacher_max_len)
               for p, o, e in zip(encode_prompts(prompts, teacher_tokenizer, template), outputs, ended)]
    kept = [i for i, (_, _, n) in enumerate(student) if n < max_len]
    if not kept:
        raise InputError(f"{records.flag}: every prompt of '{records.path}' is at least --max_seq_length={max_len} tokens long: "
                         "no response is left to learn")
    return CrossTokenTexts([student[i][:2] for i in kept], [teacher[i][:2] for i in kept], "examples", dropped=len(records) - len(kept),
                           prompt_lens=[(student[i][2], teacher[i][2]) for i in kept], dropped_why=None, texts=[outputs[i] for i in kept])


def with_answers(examples: list, teacher_prompts: list, tokenizer, teacher_tokenizer, teacher_max_len: int) -> CrossTokenTexts:
    """On-policy samples (prompt + the student's answer ids, "ended" with a stop token) as both
    models read them: the student keeps its sampled ids, whose offsets come from decoding them;
    the teacher reads its own prompt (`teacher_prompts`, ids) and the answer's text re-tokenised."""
    student, teacher, prompts, texts = [], [], [], []
    for e, teacher_prompt in zip(examples, teacher_prompts):
        n = e["prompt_len"]
        answer = e["input_ids"][n:]
        spelled = answer[:-1] if e["ended"] and answer else answer  # the stop token spells no text
        text, (ends, kinds) = _decoded(spelled, tokenizer)
        tail = len(answer) - len(spelled)
        student.append((e["input_ids"], ([0] * n + ends + [ends[-1] if ends else 0] * tail,
                                         [EMPTY] * (n - 1) + [WHOLE] * bool(n) + kinds + [EMPTY] * tail)))
        ids, offsets, m = answered(teacher_prompt, text, bool(e["ended"]), teacher_tokenizer, teacher_max_len)
        teacher.append((ids, offsets))
        prompts.append((n, m))
        texts.append(text)
    return CrossTokenTexts(student, teacher, "answers", prompt_lens=prompts, texts=texts)


def _decoded(ids: List[int], tokenizer) -> tuple:
    """(the text `ids` spell, (ends, kinds) of each id in it): a token whose prefix does not decode
    to a prefix of the text ends inside a character (byte-level BPE's partial bytes decode to
    U+FFFD): PART, ending where that character does. Quadratic in the answer's length, which
    --max_new_tokens bounds."""
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    ends, kinds, whole_end = [], [], 0
    for i in range(len(ids)):
        prefix = tokenizer.decode(ids[: i + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        end = min(len(prefix), len(text))
        if not text.startswith(prefix):
            kinds.append(PART)
        else:
            kinds.append(WHOLE if end > whole_end else EMPTY)
            whole_end = max(whole_end, end)
        ends.append(end)
    return text, (ends, kinds)


def _target_bytes(text: str, side: tuple, prompt_len: int) -> int:
    """UTF-8 bytes of the text one side's targets spell: from where the token before its first
    target ends to where its last token ends (the offsets count characters of `text`)."""
    ends = side[1][0]
    first = max(prompt_len, 1)
    return len(text[ends[first - 1] : ends[-1]].encode("utf-8")) if len(ends) > first else 0


def answered(prompt: List[int], response: str, ended: bool, tokenizer, max_len: int) -> tuple:
    """(ids, (ends, kinds), prompt length) of a prompt's ids and a response text (and EOS when
    `ended`), with offsets from the response's start: the prompt's last token ends there."""
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    ends, kinds = token_ends(encoded["offset_mapping"])
    eos = [tokenizer.eos_token_id] if ended and tokenizer.eos_token_id is not None else []
    ids = prompt + encoded["input_ids"] + eos
    ends = [0] * len(prompt) + ends + [ends[-1] if ends else 0] * len(eos)
    kinds = [EMPTY] * (len(prompt) - 1) + [WHOLE] * bool(prompt) + kinds + [EMPTY] * len(eos)
    return ids[:max_len], (ends[:max_len], kinds[:max_len]), len(prompt)


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
    teacher = collate_lm([{"input_ids": e["teacher_ids"], "prompt_len": e["teacher_prompt_len"], "index": e["index"]} for e in examples],
                         teacher_pad_id, with_labels=True)
    batch["teacher_input_ids"], batch["teacher_attention_mask"] = teacher["input_ids"], teacher["attention_mask"]
    batch["teacher_labels"] = teacher["labels"]
    position = torch.full_like(batch["input_ids"], -1)
    aligned = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for row, e in enumerate(examples):
        position[row, : len(e["teacher_position"])] = torch.tensor(e["teacher_position"])
        aligned[row, : len(e["aligned"])] = torch.tensor(e["aligned"])
    batch["teacher_position"], batch["aligned"] = position, aligned
    batch["teacher_rows"] = torch.tensor([e["teacher_rows"] for e in examples])  # the teacher positions each example has
    batch["teacher_prompt_len"] = teacher["prompt_len"]
    for side in ("bytes", "teacher_bytes"):
        batch[side] = torch.tensor([float(e[side]) for e in examples])
    return batch
