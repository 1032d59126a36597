"""Causal-LM data that is not binarized: instruction records and raw text files.

Text records (JSON/JSONL/CSV/TSV with a `text` field) are each one sequence, learned whole.
Instruction records (JSON/JSONL/CSV/TSV with `instruction`, optional `input`, `output`,
Alpaca's layout) are rendered by --prompt_template, else the tokenizer's chat template when
it has one, else Alpaca's template. Prompt and response are tokenised separately so the
boundary is exact: an item's first `prompt_len` tokens are context and get no label.

A `.txt` file is read as one stream of text, tokenised in batches of lines and cut into
blocks of `max_len` tokens (the usual causal-LM recipe: no token is padded or dropped).
"""

import itertools
from typing import Dict, List, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset

from distillation.data.records import read_records, route_ids
from distillation.errors import InputError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class TokenSequences(Dataset):
    """Items `{"input_ids": list, "prompt_len": int, "index": i}`; `lengths` for the sampler."""

    def __init__(self, input_ids: List[List[int]], prompt_lens: List[int], unk_id: Optional[int], dropped: int = 0,
                 unit: str = "examples", read: str = "", routes: Optional[List[int]] = None, dropped_why: Optional[str] = None):
        self.input_ids, self.prompt_lens = input_ids, prompt_lens
        self.routes = routes  # each example's teacher (--teacher_column), or None
        self.unit, self.read = unit, read  # for the run's header: what an item is, what the file held
        self.dropped = dropped  # records left out (the run's header says how many and why)
        self.dropped_why = dropped_why  # None: their prompt fills --max_seq_length (instruction records)
        # Share of the targets the tokenizer could not read (the header warns when it is high).
        targets = [t for ids, n in zip(input_ids, prompt_lens) for t in ids[n:]]
        self.unknown_share = sum(t == unk_id for t in targets) / max(len(targets), 1) if unk_id is not None else 0.0
        self.lengths = [len(ids) for ids in input_ids]

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, i) -> Dict:
        return {"input_ids": self.input_ids[i], "prompt_len": self.prompt_lens[i], "index": i}


def render_prompt(instruction: str, extra: str, tokenizer, template: Optional[str]) -> str:
    """The prompt text of one instruction record (everything the response follows)."""
    if template is not None:
        try:
            return template.format(instruction=instruction, input=extra)
        except (KeyError, IndexError, ValueError) as err:
            raise InputError(f"--prompt_template: cannot fill it ({type(err).__name__}: {err}); use {{instruction}} and {{input}}") from None
    if getattr(tokenizer, "chat_template", None):
        content = f"{instruction}\n\n{extra}" if extra else instruction
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return (ALPACA_PROMPT if extra else ALPACA_PROMPT_NO_INPUT).format(instruction=instruction, input=extra)


def encode_prompts(records: List[Tuple[str, str]], tokenizer, template: Optional[str]) -> List[List[int]]:
    """The prompt ids of (instruction, input) records, as training reads them and as
    generate_responses.py asks the writer: one function, so the writer answers exactly the
    prompt the student learns the answer to."""
    texts = [render_prompt(instruction, extra, tokenizer, template) for instruction, extra in records]
    chat = template is None and bool(getattr(tokenizer, "chat_template", None))
    # A chat template writes its own special tokens; a plain template gets the tokenizer's usual
    # leading ones (e.g. Llama's <s>) but no trailing [SEP]-like token, which would split prompt and response.
    ids = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    return ids if chat else [_without_trailing_end(row, tokenizer) for row in ids]


def _without_trailing_end(ids: List[int], tokenizer) -> List[int]:
    """`ids` less the EOS or [SEP] the tokenizer may append (the loaders place their own)."""
    return ids[:-1] if ids and ids[-1] in {tokenizer.eos_token_id, tokenizer.sep_token_id} - {None} else ids


def load_instructions(path: str, flag: str, tokenizer, max_len: int, template: Optional[str],
                      routes: Optional[tuple] = None) -> TokenSequences:
    """Instruction records -> prompt + response + eos ids, truncated to `max_len`; records whose
    prompt leaves no room for a response token are dropped. Every record needs a string
    `instruction` and `output`; `input` may be missing, null or a string. A record whose
    `ended_with_eos` is false (generate_responses.py: cut by --max_new_tokens) gets no EOS: the
    student must not learn to stop where the writer was stopped. The EOS appended is the
    tokenizer's, whichever of generation.stop_ids ended the writer's answer (the text holds none
    of them), so every record ends the way the student is taught to end."""
    records = read_records(path, flag)
    if "text" in records[0] and "instruction" not in records[0]:
        return _text_records(records, tokenizer, max_len, routes)
    prompts, outputs, ended = instruction_fields(records)
    teachers = route_ids(records, *routes) if routes else [None] * len(records)  # --teacher_column
    prompt_ids = encode_prompts(prompts, tokenizer, template)
    responses = tokenizer(outputs, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    input_ids, prompt_lens, kept_routes = [], [], []
    for prompt, response, end, route in zip(prompt_ids, responses, ended, teachers):
        if len(prompt) >= max_len:
            continue
        input_ids.append((prompt + response + eos * end)[:max_len])
        prompt_lens.append(len(prompt))
        kept_routes.append(route)
    if not input_ids:
        raise InputError(f"{flag}: every prompt of '{path}' is at least --max_seq_length={max_len} tokens long: no response is left to learn")
    return TokenSequences(input_ids, prompt_lens, tokenizer.unk_token_id, dropped=len(records) - len(input_ids),
                          routes=kept_routes if routes else None)


def instruction_fields(records) -> Tuple[List[Tuple[str, str]], List[str], List[bool]]:
    """([(instruction, input)], [output], [ended with EOS]) of instruction records, each field checked."""
    if "instruction" not in records[0] or "output" not in records[0]:
        raise records.error(0, f"no 'instruction' and 'output' fields (has {', '.join(map(str, records[0]))}); clm reads "
                               "instruction/input/output records, text records, a .txt file or a binarized dataset")
    prompts, outputs, ended = [], [], []
    for i, record in enumerate(records):
        instruction = records.column(i, "instruction", "instruction field")
        extra = records.column(i, "input", "input field", nullable=True) if "input" in record else None
        outputs.append(records.column(i, "output", "output field"))
        ended.append("ended_with_eos" not in record or records.column(i, "ended_with_eos", "ended_with_eos field", kinds=(bool,)))
        prompts.append((instruction, extra or ""))
    return prompts, outputs, ended


def _text_records(records, tokenizer, max_len: int, routes: Optional[tuple]) -> TokenSequences:
    """Records of a `text` field, each one sequence learned whole (the tokenizer's leading special
    tokens, then the text and EOS, truncated to `max_len`): documents kept apart, e.g. to route
    each one to its domain's teacher (--teacher_column)."""
    texts = [records.column(i, "text", "text field") for i in range(len(records))]
    teachers = route_ids(records, *routes) if routes else [None] * len(records)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    kept = []
    for ids, route in zip(tokenizer(texts)["input_ids"], teachers):
        ids = _without_trailing_end(ids, tokenizer) + eos  # one EOS, whatever the tokenizer appends
        if len(ids[:max_len]) >= 2:  # one token predicts nothing
            kept.append((ids[:max_len], route))
    if not kept:
        raise InputError(f"{records.flag}: '{records.path}' has no text record of 2 tokens or more")
    return TokenSequences([ids for ids, _ in kept], [0] * len(kept), tokenizer.unk_token_id, dropped=len(records) - len(kept),
                          unit="text records", routes=[r for _, r in kept] if routes else None, dropped_why="shorter than 2 tokens")


def load_text_blocks(path: str, flag: str, tokenizer, max_len: int, batch_lines: int = 10000) -> TokenSequences:
    """A text file as consecutive blocks of `max_len` tokens (the last one may be shorter)."""
    try:
        f = open(path, encoding="utf-8")
    except OSError:
        raise InputError(f"{flag}: no such file '{path}'") from None
    chunks, n_lines = [], 0
    with f:
        while True:
            try:
                lines = list(itertools.islice(f, batch_lines))
            except UnicodeDecodeError as err:
                raise InputError(f"{flag}: '{path}' is not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not lines:
                break
            n_lines += len(lines)
            ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
            chunks.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    blocks = [tokens[i : i + max_len].tolist() for i in range(0, len(tokens), max_len)]
    blocks = [b for b in blocks if len(b) >= 2]  # one token predicts nothing
    if not blocks:
        raise InputError(f"{flag}: '{path}' holds fewer than 2 tokens of text")
    return TokenSequences(blocks, [0] * len(blocks), tokenizer.unk_token_id,
                          unit=f"blocks of {max_len} tokens", read=f"{n_lines:,} lines, {len(tokens):,} tokens")
