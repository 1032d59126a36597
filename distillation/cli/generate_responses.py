"""A model's responses to instruction prompts, for sequence-level KD (the teacher writes, the student learns).

    python scripts/generate_responses.py --model T --data_file prompts.jsonl --dump_file teacher_says.jsonl \\
        --num_responses 2 --max_new_tokens 256 --temperature 0.7
    torchrun --nproc_per_node=8 scripts/generate_responses.py ...          # prompts split over processes
    python scripts/train.py --objective clm --student_name S --data_file teacher_says.jsonl --dump_path runs/seqkd

Prompts are instruction records (`instruction`, optional `input`; an `output` is ignored),
rendered and tokenised as train.py does it (the tokenizer's chat template, else Alpaca's, or
--prompt_template; the tokenizer's BOS). The responses are drawn by the flags alone: the model
folder's generation_config.json is not read, but for its EOS ids, which end a response as the
tokenizer's EOS does. Rerunning the same command finishes an interrupted file with the same
responses an unbroken run writes (each prompt's draws are seeded by its index).
distillation/generation.py says how.
"""

import argparse
import json
import os

from transformers import AutoModelForCausalLM

from distillation.cli import ArgumentParser, command, require_positive
from distillation.config import PRECISIONS, DistillConfig
from distillation.data.identity import file_sha256
from distillation.distributed import barrier, init_distributed, shutdown
from distillation.errors import InputError
from distillation.generation import check_dump_file, generate_all, join_parts, read_prompts, sampling_config
from distillation.models import TORCH_DTYPES, load_config, load_tokenizer

SETTINGS = ("model", "tokenizer_name", "prompt_template", "num_responses", "max_new_tokens", "temperature", "top_p", "top_k",
            "repetition_penalty", "seed", "dtype")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="The writer (usually the teacher): hub name or folder of a causal LM.")
    p.add_argument("--data_file", required=True, help="Instruction records (jsonl/json/csv/tsv): instruction, optional input.")
    p.add_argument("--dump_file", required=True, help="The jsonl to write: instruction, input, output (+ prompt_index, "
                   "response_index, ended_with_eos), one row a response.")
    p.add_argument("--tokenizer_name", help="Default: --model's.")
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
    require_positive(args, "num_responses", "max_new_tokens")
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
    load_config(args.model, "--model")  # a bad --model is named before anything heavy
    cfg = DistillConfig.from_dict({"objective": "clm", "data_file": args.data_file, "dump_path": "unused", "student_name": args.model,
                                   "tokenizer_name": args.tokenizer_name, "alpha_task": 1.0, "alpha_ce": 0.0})
    try:
        tokenizer = load_tokenizer(cfg)
    except InputError as err:  # load_tokenizer names the training flags
        raise InputError(str(err).replace("--student_name", "--model")) from None
    prompts = read_prompts(args.data_file, "--data_file", tokenizer, args.prompt_template)
    settings = _settings_check(args, bool(parts) and not args.force)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=TORCH_DTYPES[args.dtype]).to(env.device)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--model: cannot load a causal LM from '{args.model}' ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if env.is_main:
        if args.force:
            for path in parts | ({args.dump_file} if os.path.exists(args.dump_file) else set()):
                os.remove(path)
        with open(args.dump_file + ".settings.json", "w") as f:
            json.dump(settings, f, indent=1)
    barrier(env)
    config = sampling_config(tokenizer, model, args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty,
                             args.num_responses)
    wrote = generate_all(model, tokenizer, prompts, args.dump_file, env, config, args.seed)
    rows = join_parts(args.dump_file, len(prompts), args.num_responses, env)
    if env.is_main:
        os.remove(args.dump_file + ".settings.json")
        print(f"{args.dump_file}: {rows} responses to {len(prompts)} prompts ({wrote} written by process 0 now); "
              f"train on it: scripts/train.py --objective clm --data_file {args.dump_file}")
    shutdown(env)


main = command(_main)
