"""A model's responses to instruction prompts, for sequence-level KD (the teacher writes, the student learns).

    python scripts/generate_responses.py --model T --data_file prompts.jsonl --dump_file teacher_says.jsonl \\
        --num_responses 2 --max_new_tokens 256 --temperature 0.7
    torchrun --nproc_per_node=8 scripts/generate_responses.py ...          # prompts split over processes
    python scripts/generate_responses.py --model_url http://127.0.0.1:8000 --tokenizer_name T ...  # by a vLLM server
    python scripts/train.py --objective clm --student_name S --data_file teacher_says.jsonl --dump_path runs/seqkd

Prompts are instruction records (`instruction`, optional `input`; an `output` is ignored),
rendered and tokenised as train.py does it (the tokenizer's chat template, else Alpaca's, or
--prompt_template; the tokenizer's BOS). The responses are drawn by the flags alone: the model
folder's generation_config.json is not read, but for its EOS ids, which end a response as the
tokenizer's EOS does. Rerunning the same command finishes an interrupted file with the same
responses an unbroken run writes (each prompt's draws are seeded by its index).
distillation/generation.py says how.

--model_url: the responses are drawn by a vLLM (OpenAI-compatible) server instead of a local
`generate`: the prompts' token ids go to its /v1/completions, one request a prompt (n =
--num_responses, seeded per prompt as above, so a rerun is equal), --requests_in_flight at once;
the answers' token ids come back and --tokenizer_name decodes them. The served model's tokenizer
must be --tokenizer_name's (checked on probe strings first: exit 2 naming what differs).
Sampling is vLLM's (its own random numbers): a seeded served file equals a rerun of itself, not
the local path's file; greedy (--temperature 0) answers are the local ones (but where two tokens are
near-tied: vLLM's kernels sum in another order).
distillation/served_generation.py says how.
"""

import argparse
import json
import os

from transformers import AutoModelForCausalLM

from distillation.cli import ArgumentParser, command, require_positive
from distillation.config import PRECISIONS, DistillConfig
from distillation.data.identity import file_sha256
from distillation.distributed import barrier, init_distributed, shutdown
from distillation.errors import InputError, TrainingStopped
from distillation.generation import check_dump_file, generate_all, join_parts, read_prompts, sampling_config
from distillation.models import TORCH_DTYPES, load_config, load_tokenizer
from distillation.served_generation import connect, generate_all_served, request_fields, served_stop_ids
from distillation.teachers.served_client import ServerError

# The served model's name, not its URL: a restarted server may answer at another port.
SETTINGS = ("model", "served_model", "tokenizer_name", "prompt_template", "num_responses", "max_new_tokens", "temperature", "top_p",
            "top_k", "repetition_penalty", "seed", "dtype")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="The writer (usually the teacher): hub name or folder of a causal LM. Or --model_url.")
    p.add_argument("--model_url", help="Instead of --model: the base URL of a vLLM (OpenAI-compatible) server that writes the "
                   "responses (e.g. http://127.0.0.1:8000); needs --tokenizer_name, its model's tokenizer.")
    p.add_argument("--served_model", help="With --model_url: the served model's name (default: the server's only model).")
    p.add_argument("--requests_in_flight", type=int, default=8, help="With --model_url: prompts sent at once (one request each).")
    p.add_argument("--timeout", type=float, default=600.0, help="With --model_url: seconds to wait for one prompt's answers.")
    p.add_argument("--retries", type=int, default=4, help="With --model_url: attempts more after a timeout, a 5xx or a dropped "
                   "connection (waiting 1, 2, 4, ... s); then the run stops, the rows written kept for a rerun.")
    p.add_argument("--data_file", required=True, help="Instruction records (jsonl/json/csv/tsv): instruction, optional input.")
    p.add_argument("--dump_file", required=True, help="The jsonl to write: instruction, input, output (+ prompt_index, "
                   "response_index, ended_with_eos), one row a response.")
    p.add_argument("--tokenizer_name", help="Default: --model's. Required with --model_url (the served model's tokenizer).")
    p.add_argument("--prompt_template", help="As train.py's (default: the tokenizer's chat template, else Alpaca's).")
    p.add_argument("--num_responses", type=int, default=1, help="Responses per prompt.")
    p.add_argument("--max_new_tokens", type=int, default=256, help="Longest response (tokens); a response that reaches it is cut.")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature; 0 = greedy (then one response a prompt).")
    p.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling: the smallest set of tokens holding this much mass.")
    p.add_argument("--top_k", type=int, default=0, help="Draw among the k most likely tokens only; 0 = no cut (not generate's "
                   "fallback of 50, nor the model's generation_config: the flags say how the responses are drawn).")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="Penalise every token already in the prompt or "
                   "response (CTRL's: a positive logit divided by this, a negative one multiplied); 1 = off. The model's "
                   "generation_config.json is not read: give its value here to draw as its authors recommend.")
    p.add_argument("--seed", type=int, default=DistillConfig.seed, help="Seed of the draws (prompt i uses its own, from this).")
    p.add_argument("--dtype", choices=PRECISIONS, default="fp32", help="The dtype the model is loaded in.")
    p.add_argument("--force", action="store_true", help="Write --dump_file again (and drop the parts of an unfinished run).")
    args = p.parse_args(argv)
    require_positive(args, "num_responses", "max_new_tokens", "requests_in_flight")
    if (args.model is None) == (args.model_url is None):
        raise InputError("give one of --model (a local model) and --model_url (a served one)")
    if args.model_url is not None and not args.tokenizer_name:
        raise InputError("--model_url needs --tokenizer_name: the served model's tokenizer (it renders the prompts and decodes "
                         "the answers)")
    if args.model_url is None and args.served_model is not None:
        raise InputError("--served_model goes with --model_url")
    if args.repetition_penalty <= 0:
        raise InputError(f"--repetition_penalty must be > 0 (got {args.repetition_penalty:g}; 1 = off)")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise InputError(f"--temperature and --top_k must be >= 0 and --top_p in (0, 1] (got {args.temperature:g}, {args.top_k}, "
                         f"{args.top_p:g})")
    if args.temperature == 0 and args.num_responses > 1:
        raise InputError(f"--num_responses {args.num_responses}: greedy decoding (--temperature 0) writes the same response each time")
    return args


def _settings_check(args, resuming: bool) -> dict:
    """This run's settings; an unfinished run resumes only with the same settings and prompts
    (exit 2 naming the first that differs)."""
    path = args.dump_file + ".settings.json"
    settings = {**{k: getattr(args, k) for k in SETTINGS}, "data_file": file_sha256(args.data_file) if os.path.isfile(args.data_file)
                else args.data_file}
    if resuming and os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        for key, value in settings.items():
            if before.get(key) != value:
                raise InputError(f"--{key}: the unfinished '{args.dump_file}' was begun with {before.get(key)!r}, this run has {value!r}; "
                                 "rerun with the same settings, or --force to start over")
    return settings


def _main(argv=None):
    args = parse_args(argv)
    env = init_distributed()
    parts = check_dump_file(args.dump_file, args.force)
    if args.model is not None:
        load_config(args.model, "--model")  # a bad --model is named before anything heavy
    cfg = DistillConfig.from_dict({"objective": "clm", "data_file": args.data_file, "dump_path": "unused",
                                   "student_name": args.model or args.tokenizer_name,
                                   "tokenizer_name": args.tokenizer_name, "alpha_task": 1.0, "alpha_ce": 0.0})
    try:
        tokenizer = load_tokenizer(cfg)
    except InputError as err:  # load_tokenizer names the training flags
        raise InputError(str(err).replace("--student_name", "--model")) from None
    prompts = read_prompts(args.data_file, "--data_file", tokenizer, args.prompt_template)
    if args.model_url is not None:
        client, allowed = connect(args.model_url, args.served_model, tokenizer, args.timeout, args.retries)
        args.served_model = client.model
        longest = max(range(len(prompts)), key=lambda i: len(prompts[i]["ids"]))
        if client.max_model_len is not None and len(prompts[longest]["ids"]) + args.max_new_tokens > client.max_model_len:
            raise InputError(f"--max_new_tokens {args.max_new_tokens}: prompt {longest} has {len(prompts[longest]['ids'])} tokens and the "
                             f"served model takes {client.max_model_len} in all (the server's --max-model-len)")
    settings = _settings_check(args, bool(parts) and not args.force)
    if args.model_url is None:
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=TORCH_DTYPES[args.dtype]).to(env.device)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"--model: cannot load a causal LM from '{args.model}' ({type(err).__name__}: "
                             f"{str(err).splitlines()[0]})") from None
    if env.is_main:
        if args.force:
            for path in parts | ({args.dump_file} if os.path.exists(args.dump_file) else set()):
                os.remove(path)
        with open(args.dump_file + ".settings.json", "w") as f:
            json.dump(settings, f, indent=1)
    barrier(env)
    if args.model_url is not None:
        fields = request_fields(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty,
                                served_stop_ids(tokenizer, args.tokenizer_name), allowed)
        try:
            wrote = generate_all_served(client, tokenizer, prompts, args.dump_file, env, fields, args.num_responses, args.seed,
                                        args.requests_in_flight)
        except ServerError as err:
            raise TrainingStopped(f"--model_url: {err}; the responses written so far are kept: rerun the same command to finish") from None
    else:
        config = sampling_config(tokenizer, model, args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                                 args.repetition_penalty, args.num_responses)
        wrote = generate_all(model, tokenizer, prompts, args.dump_file, env, config, args.seed)
    rows = join_parts(args.dump_file, len(prompts), args.num_responses, env)
    if env.is_main:
        os.remove(args.dump_file + ".settings.json")
        print(f"{args.dump_file}: {rows} responses to {len(prompts)} prompts ({wrote} written by process 0 now); "
              f"train on it: scripts/train.py --objective clm --data_file {args.dump_file}")
    shutdown(env)


main = command(_main)
