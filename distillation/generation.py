"""Sequence-level KD's data: a model's own responses to instruction prompts, as jsonl that
`train.py --objective clm` reads as instruction data (Kim & Rush 2016).

Each prompt is rendered as training renders it (data/lm_text.render_prompt: the tokenizer's chat
template, else Alpaca's, or --prompt_template) and answered `num_responses` times with
`generate`. The draws of prompt i come from a generator seeded with (seed, i), so a prompt's
responses are the same however the prompts are split over processes and whatever was done
before an interruption: a rerun skips the (prompt, response) pairs already written and a
resumed file equals an unbroken one. Each process appends to its own part file, one complete
line at a time; the last process to finish joins the parts into --dump_file in prompt order.
"""

import glob
import json
import os
from typing import Dict, List, Set, Tuple

import torch
from tqdm.auto import tqdm

from distillation.data.lm_text import render_prompt
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
        prompts.append({"instruction": instruction, "input": extra or "", "prompt": render_prompt(instruction, extra or "", tokenizer, template)})
    return prompts


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


def generate_all(model, tokenizer, prompts: List[dict], dump_file: str, env, num_responses: int, max_new_tokens: int,
                 temperature: float, top_p: float, top_k: int, seed: int) -> int:
    """Answer this rank's prompts (every world_size-th), appending rows to its part file;
    returns how many rows it wrote now."""
    done = written(dump_file)
    mine = [i for i in range(env.rank, len(prompts), env.world_size)
            if any((i, r) not in done for r in range(num_responses))]
    model.eval()
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k} if temperature > 0
                else {"do_sample": False})
    count, part = 0, part_name(dump_file, env.rank, env.world_size)
    _drop_cut_line(part)
    with open(part, "a") as out, torch.no_grad():
        for i in tqdm(mine, desc="generate", unit="prompt", disable=not env.is_main):
            ids = tokenizer(prompts[i]["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"].to(env.device)
            torch.manual_seed(item_seed(seed, i))  # this prompt's draws, wherever and whenever it runs
            outputs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     num_return_sequences=num_responses, pad_token_id=tokenizer.pad_token_id, **sampling)
            for r, sequence in enumerate(outputs):
                if (i, r) in done:
                    continue
                response = sequence[ids.shape[1]:]
                ended = bool((response == tokenizer.eos_token_id).any()) if tokenizer.eos_token_id is not None else False
                row = {"instruction": prompts[i]["instruction"], "input": prompts[i]["input"],
                       "output": tokenizer.decode(response, skip_special_tokens=True), "prompt_index": i, "response_index": r,
                       "ended_with_eos": ended}
                out.write(json.dumps(row) + "\n")
                out.flush()
                count += 1
    return count


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
