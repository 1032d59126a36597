"""Sequence-level KD's data: a model's own responses to instruction prompts, as jsonl that
`train.py --objective clm` reads as instruction data (Kim & Rush 2016).

Each prompt is rendered and tokenised as training does it (data/lm_text.encode_prompts: the
tokenizer's chat template, else Alpaca's, or --prompt_template, with the tokenizer's BOS) and
answered `num_responses` times with `generate`, drawn by `sampling_config` alone (on-policy
sampling uses it too). The draws of prompt i come from a generator seeded with (seed, i), so a prompt's
responses are the same however the prompts are split over processes and whatever was done
before an interruption: a rerun skips the (prompt, response) pairs already written and a
resumed file equals an unbroken one. Each process appends to its own part file, one complete
line at a time; the last process to finish joins the parts into --dump_file in prompt order.
"""

import contextlib
import glob
import json
import os
from typing import Dict, List, Set, Tuple

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from distillation.data.lm_text import encode_prompts
from distillation.data.records import read_records
from distillation.distributed import barrier, item_seed
from distillation.errors import InputError


def read_prompts(path: str, flag: str, tokenizer, template) -> List[dict]:
    """[{"instruction", "input", "prompt"}] of the instruction records of `path` (an `output`, if
    any, is ignored: the model writes it)."""
    records = read_records(path, flag)
    if "instruction" not in records[0]:
        raise records.error(0, f"no 'instruction' field (has {', '.join(map(str, records[0]))}); prompts are instruction records "
                               "with an optional 'input', as train.py --objective clm reads them")
    prompts = []
    for i in range(len(records)):
        instruction = records.column(i, "instruction", "instruction field")
        extra = records.column(i, "input", "input field", nullable=True) if "input" in records[i] else None
        prompts.append({"instruction": instruction, "input": extra or ""})
    for prompt, ids in zip(prompts, encode_prompts([(p["instruction"], p["input"]) for p in prompts], tokenizer, template)):
        prompt["ids"] = ids
    return prompts


def stop_ids(tokenizer, model) -> List[int]:
    """The ids that end an answer: the tokenizer's EOS (the one training appends) and the EOS ids
    of the model's own generation config (Qwen-Instruct lists <|im_end|> and <|endoftext|>),
    within the tokenizer. `generate` stops on exactly these, and an answer holding one ended with
    EOS (ended_with_eos, on-policy's cut): one set."""
    listed = model.generation_config.eos_token_id
    listed = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    return sorted({i for i in [tokenizer.eos_token_id, *listed] if i is not None and i < len(tokenizer)})


def ends(answer: List[int], stop: List[int]) -> Tuple[List[int], bool]:
    """(`answer` through its first stop id, whether it has one)."""
    at = next((n for n, token in enumerate(answer) if token in stop), None)
    return (answer, False) if at is None else (answer[: at + 1], True)


def sampling_config(tokenizer, model, max_new_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = 0,
                    repetition_penalty: float = 1.0, num_return_sequences: int = 1) -> GenerationConfig:
    """How `generate` draws, from our flags alone (temperature 0: greedy). Ids past the tokenizer
    (rows of a padded vocabulary) are never drawn: a target the tokenizer lacks ends a run. Use
    it under `drawn_by`, which keeps the model folder's generation_config.json out."""
    vocab = model.config.get_text_config().vocab_size
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k} if temperature > 0 else {"do_sample": False}
    return GenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences, repetition_penalty=repetition_penalty,
                            no_repeat_ngram_size=0, eos_token_id=stop_ids(tokenizer, model), pad_token_id=tokenizer.pad_token_id,
                            suppress_tokens=list(range(len(tokenizer), vocab)) or None, **sampling)


@contextlib.contextmanager
def drawn_by(model, config: GenerationConfig):
    """`model.generate(generation_config=config)` draws by `config` alone: generate fills what a
    passed config leaves unset (None) from `model.generation_config`, i.e. the folder's
    generation_config.json (repetition_penalty, no_repeat_ngram_size, bad words...), so that is
    `config` itself for the while."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


def part_name(dump_file: str, rank: int, world_size: int) -> str:
    return f"{dump_file}.part{rank}-of-{world_size}"


def written(dump_file: str) -> Dict[Tuple[int, int], dict]:
    """The (prompt, response) rows already written by any earlier run, at any process count:
    complete lines of the part files (a line cut by a kill is dropped)."""
    done = {}
    for path in glob.glob(glob.escape(dump_file) + ".part*-of-*"):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed run
                done[(row["prompt_index"], row["response_index"])] = row
    return done


def generate_all(model, tokenizer, prompts: List[dict], dump_file: str, env, config: GenerationConfig, seed: int) -> int:
    """Answer this rank's prompts (every world_size-th) `config.num_return_sequences` times,
    appending rows to its part file; returns how many rows it wrote now."""
    num_responses, stop = config.num_return_sequences, config.eos_token_id
    done, mine, part = pending(dump_file, len(prompts), num_responses, env)
    model.eval()
    count = 0
    with open(part, "a") as out, torch.no_grad(), drawn_by(model, config):
        for i in tqdm(mine, desc="generate", unit="prompt", disable=not env.is_main):
            ids = torch.tensor([prompts[i]["ids"]], device=env.device)
            torch.manual_seed(item_seed(seed, i))  # this prompt's draws, wherever and whenever it runs
            outputs = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            for r, sequence in enumerate(outputs):
                if (i, r) in done:
                    continue
                answer, ended = ends(sequence[ids.shape[1]:].tolist(), stop)
                out.write(json.dumps(response_row(prompts[i], i, r, answer, ended, tokenizer)) + "\n")
                out.flush()
                count += 1
    return count


def pending(dump_file: str, n_prompts: int, num_responses: int, env) -> tuple:
    """(the rows already written, this rank's prompts (every world_size-th) with a response still
    to write, its part file, ready to append to)."""
    done = written(dump_file)
    mine = [i for i in range(env.rank, n_prompts, env.world_size) if any((i, r) not in done for r in range(num_responses))]
    part = part_name(dump_file, env.rank, env.world_size)
    _drop_cut_line(part)
    return done, mine, part


def response_row(prompt: dict, i: int, r: int, answer: List[int], ended: bool, tokenizer) -> dict:
    """The row of response r to prompt i: `answer` (through its stop id when it `ended`) decoded
    without the stop id, and whether it ended (false: cut at --max_new_tokens)."""
    return {"instruction": prompt["instruction"], "input": prompt["input"],
            "output": tokenizer.decode(answer[:-1] if ended else answer, skip_special_tokens=True),
            "prompt_index": i, "response_index": r, "ended_with_eos": ended}


def _drop_cut_line(path: str) -> None:
    """Cut a line a kill left unfinished off the end of `path`, so that appending starts a line."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def join_parts(dump_file: str, n_prompts: int, num_responses: int, env) -> int:
    """Every rank waits; the main one writes --dump_file in prompt order from the parts and
    removes them. Returns the rows written."""
    barrier(env)
    rows = 0
    if env.is_main:
        done = written(dump_file)
        missing = [(i, r) for i in range(n_prompts) for r in range(num_responses) if (i, r) not in done]
        if missing:
            raise RuntimeError(f"{len(missing)} responses were not written (e.g. prompt {missing[0][0]}): rerun to finish them")
        tmp = dump_file + ".tmp"
        with open(tmp, "w") as f:
            for key in sorted(done):
                f.write(json.dumps(done[key]) + "\n")
                rows += 1
        os.replace(tmp, dump_file)
        for path in glob.glob(glob.escape(dump_file) + ".part*-of-*"):
            os.remove(path)
    barrier(env)
    return rows


def check_dump_file(dump_file: str, force: bool) -> Set[str]:
    """A finished --dump_file is not overwritten without --force (parts of an unfinished run resume)."""
    if os.path.isdir(dump_file):
        raise InputError(f"--dump_file: '{dump_file}' is a folder")
    if os.path.exists(dump_file) and not force:
        raise InputError(f"--dump_file: '{dump_file}' already exists; add --force to write it again")
    folder = os.path.dirname(os.path.abspath(dump_file))
    if not os.path.isdir(folder):
        raise InputError(f"--dump_file: no such folder '{folder}'")
    return set(glob.glob(glob.escape(dump_file) + ".part*-of-*"))
