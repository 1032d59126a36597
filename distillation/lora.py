"""LoRA students (--lora_r > 0, the optional `peft` extra): low-rank adapters in the student's
linear layers are all that trains (with a classifier's small task head); final/ merges them.

peft's `inject_adapter_in_model` puts the LoRA layers into the student in place, so it stays the
transformers model it was: its base model, output embeddings (chunked losses), save_pretrained
and FSDP's per-block wrapping are unchanged. Every other weight is frozen, so gradients and AdamW
state exist for the adapters only (the memory plan counts them). A saved folder holds the merged
weights W + (alpha / r)·B·A, a plain `from_pretrained` model, and the adapters beside it in
peft's format (`adapter/`: `PeftModel.from_pretrained(<the initial student>, "adapter")`).
Checkpoints hold the whole student (frozen weights included): --resume rebuilds the same adapters
and reads them back.
"""

import os
from typing import List

import torch
from safetensors.torch import save_file
from torch import nn

from distillation.errors import InputError
from distillation.parallel import transformer_blocks

ADAPTER_FOLDER = "adapter"
_NAME = "default"  # peft's adapter name


def _peft():
    try:
        import peft
    except ImportError:
        raise InputError("--lora_r needs the peft package: pip install -e '.[peft]'") from None
    return peft


def default_targets(student: nn.Module) -> List[str]:
    """The full names of every nn.Linear inside the student's transformer blocks: the attention
    and MLP projections of any family (q_proj ... down_proj, query/key/value/dense, q_lin ... lin2),
    never the embeddings, the LM head or a classifier."""
    in_blocks = {id(m) for block in transformer_blocks(student) for m in block.modules()}
    names = [name for name, m in student.named_modules() if isinstance(m, nn.Linear) and id(m) in in_blocks]
    if not names:
        raise InputError(f"--lora_r: the student ({type(student).__name__}) has no nn.Linear layers in its blocks (GPT-2's "
                         "are Conv1D); name the layers to adapt with --lora_target_modules")
    return names


def lora_config(student: nn.Module):
    """The LoraConfig that add_lora injected into `student`, or None (no --lora_r)."""
    return getattr(student, "peft_config", {}).get(_NAME)


def student_parameters(student: nn.Module) -> int:
    """The student's own parameters, its LoRA adapters left out: what the merged folder holds."""
    return sum(p.numel() for name, p in student.named_parameters() if ".lora_" not in name)


def add_lora(student: nn.Module, cfg, train_head: bool):
    """Inject LoRA into `student` in place and freeze all else (but the task head when
    `train_head`: the parameters outside the base model). Returns peft's LoraConfig."""
    peft = _peft()
    targets = cfg.lora_target_modules.split(",") if cfg.lora_target_modules else default_targets(student)
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    try:
        peft.inject_adapter_in_model(config, student, adapter_name=_NAME)
    except ValueError:  # no module matched --lora_target_modules
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in student.named_modules() if isinstance(m, nn.Linear)})
        raise InputError(f"--lora_target_modules {cfg.lora_target_modules}: no layer of the student has such a name; its "
                         f"nn.Linear layers are named {', '.join(linear)}") from None
    base = student.base_model_prefix
    for name, p in student.named_parameters():
        p.requires_grad_(".lora_" in name or (train_head and not name.startswith(base + ".")))
    return config


def merged_state(state: dict, config) -> tuple:
    """(the student's state dict with every adapter merged into its weight, as the model without
    LoRA names it; the adapter weights, named as peft saves them). `state`: the student's
    gathered state dict with LoRA layers (`x.base_layer.weight`, `x.lora_A.default.weight`, ...)."""
    scaling = config.lora_alpha / config.r
    merged, adapter = {}, {}
    for key, value in state.items():
        if f".lora_A.{_NAME}." in key or f".lora_B.{_NAME}." in key:
            adapter["base_model.model." + key.replace(f".{_NAME}.", ".")] = value.detach().cpu().contiguous()
        elif ".base_layer." in key:
            layer, leaf = key.split(".base_layer.")
            value = value.detach().float()
            if leaf == "weight":
                a, b = state[f"{layer}.lora_A.{_NAME}.weight"].float(), state[f"{layer}.lora_B.{_NAME}.weight"].float()
                value = value + scaling * (b.to(value.device) @ a.to(value.device))
            merged[f"{layer}.{leaf}"] = value
        else:
            merged[key] = value
    return merged, adapter


def save_adapter(folder: str, config, adapter: dict, base_model: str) -> None:
    """adapter/ in peft's format (adapter_config.json, adapter_model.safetensors), naming the
    student it adapts (`base_model`: --student_name)."""
    path = os.path.join(folder, ADAPTER_FOLDER)
    config.base_model_name_or_path = base_model
    config.save_pretrained(path)
    save_file({k: v.to(torch.float32) for k, v in adapter.items()}, os.path.join(path, "adapter_model.safetensors"))
